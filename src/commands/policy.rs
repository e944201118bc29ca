//! `policy list|show|set|delete`, with kopia's flags, value syntax ("inherit"), targets and output.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use kmover_format::snapshot::manifest::SourceInfo;
use kmover_format::snapshot::policy::{
    ActionCommand, Definition, Policy, TimeOfDay, decode_policy, encode_policy,
};
use kmover_repo::Repository;
use kmover_snapshot::policy::{
    defined_policy, effective_policy_for, list_policies, remove_policy, set_policy,
};

use crate::cli::{GlobalArgs, PolicyCommand, PolicySetArgs, PolicyTargetArgs};
use crate::connection;

pub async fn run(global: &GlobalArgs, cmd: PolicyCommand) -> anyhow::Result<()> {
    let conn = connection::open_connected(global).await?;
    let (host, user) = (conn.config.hostname.as_str(), conn.config.username.as_str());
    let repo = &conn.repo;
    match cmd {
        PolicyCommand::List { json } => list(repo, json).await,
        PolicyCommand::Show { targets, json } => {
            for target in policy_targets(repo, &targets, host, user).await? {
                let (effective, def) = effective_policy_for(repo, &target)
                    .await
                    .with_context(|| format!("can't get effective policy for {target:?}"))?;
                if json {
                    println!("{}", String::from_utf8_lossy(&encode_policy(&effective)));
                } else {
                    println!(
                        "Policy for {target}:\n\n{}",
                        show_text(&target, &effective, &def)
                    );
                }
            }
            Ok(())
        }
        PolicyCommand::Set(args) => {
            for target in policy_targets(repo, &args.targets, host, user).await? {
                set_from_flags(repo, &target, &args).await?;
            }
            repo.flush().await?;
            Ok(())
        }
        PolicyCommand::Delete { targets, dry_run } => {
            for target in policy_targets(repo, &targets, host, user).await? {
                eprintln!("Removing policy on {:?}...", target.to_string());
                if !dry_run {
                    remove_policy(repo, &target)
                        .await
                        .with_context(|| format!("error removing policy on {target}"))?;
                }
            }
            repo.flush().await?;
            Ok(())
        }
    }
}

/// `policy set` on one target (the flags' own targets are ignored); the caller flushes.
pub(crate) async fn set_from_flags(
    repo: &Repository,
    target: &SourceInfo,
    args: &PolicySetArgs,
) -> anyhow::Result<()> {
    let mut policy = defined_policy(repo, target).await?.unwrap_or_default();
    eprintln!("Setting policy for {target}");
    let mut changes = Changes::default();
    apply_flags(args, &mut policy, &mut changes)?;
    if changes.0 == 0 {
        bail!("no changes specified");
    }
    set_policy(repo, target, &policy)
        .await
        .with_context(|| format!("can't save policy for {target}"))?;
    Ok(())
}

async fn list(repo: &Repository, json: bool) -> anyhow::Result<()> {
    let policies = list_policies(repo)
        .await
        .context("error listing policies")?;
    if !json {
        for p in &policies {
            println!("{} {}", p.id, p.target);
        }
        return Ok(());
    }
    // kopia's `TargetWithPolicy`: id and target, then the policy's own fields inlined.
    let mut out = String::from("[");
    for (i, p) in policies.iter().enumerate() {
        out.push_str(if i == 0 { "\n " } else { ",\n " });
        let body = String::from_utf8_lossy(&encode_policy(&p.policy)).into_owned();
        out.push_str(&format!(
            "{{\"id\":{},\"target\":{},{}",
            go_escape(&p.id),
            source_json(&p.target),
            body.strip_prefix('{').unwrap_or(&body)
        ));
    }
    out.push_str("\n]");
    print!("{out}");
    Ok(())
}

fn source_json(s: &SourceInfo) -> String {
    format!(
        "{{\"host\":{},\"userName\":{},\"path\":{}}}",
        go_escape(&s.host),
        go_escape(&s.user_name),
        go_escape(&s.path)
    )
}

/// Kopia's `policyTargets`: `--global`, or each argument as a policy manifest ID or a source.
async fn policy_targets(
    repo: &Repository,
    args: &PolicyTargetArgs,
    host: &str,
    user: &str,
) -> anyhow::Result<Vec<SourceInfo>> {
    if args.global != args.targets.is_empty() {
        bail!("must pass either '--global' or a list of path targets");
    }
    if args.global {
        return Ok(vec![SourceInfo::default()]);
    }
    let mut out = Vec::new();
    for text in &args.targets {
        // Like kopia, any manifest whose payload reads as a policy names its labels' source.
        if let Some(e) = repo.manifests().get(text).await?
            && decode_policy(&e.data).is_ok()
        {
            out.push(SourceInfo::from_labels(&e.labels));
            continue;
        }
        out.push(
            parse_source_info(text, host, user)
                .with_context(|| format!("unable to parse source info: {text:?}"))?,
        );
    }
    Ok(out)
}

/// Kopia's `ParseSourceInfo`: `(global)`, `user@host:path`, `user@host`, `@host`, or a local path
/// made absolute and cleaned (for the connected `user@host`).
pub(crate) fn parse_source_info(text: &str, host: &str, user: &str) -> anyhow::Result<SourceInfo> {
    if text == "(global)" {
        return Ok(SourceInfo::default());
    }
    let at = text.find('@');
    let colon = text.find(':');
    match (at, colon) {
        (Some(a), Some(c)) if a > 0 && a < c => {
            return Ok(SourceInfo {
                user_name: text[..a].to_string(),
                host: text[a + 1..c].to_string(),
                path: text[c + 1..].to_string(),
            });
        }
        (Some(a), None) => {
            if a + 1 < text.len() {
                return Ok(SourceInfo {
                    user_name: text[..a].to_string(),
                    host: text[a + 1..].to_string(),
                    path: String::new(),
                });
            }
            bail!("invalid hostname in {text:?}");
        }
        _ => {}
    }
    Ok(SourceInfo {
        host: host.to_string(),
        user_name: user.to_string(),
        path: go_clean(&go_abs(text)?),
    })
}

/// Go's `filepath.Abs`: relative paths are joined to `os.Getwd()` (which prefers `$PWD` when it
/// names the current directory).
fn go_abs(path: &str) -> anyhow::Result<String> {
    if path.starts_with('/') {
        return Ok(path.to_string());
    }
    let cwd = go_getwd().context("invalid directory")?;
    Ok(format!("{cwd}/{path}"))
}

fn go_getwd() -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(pwd) = std::env::var("PWD")
        && pwd.starts_with('/')
        && let (Ok(a), Ok(b)) = (std::fs::metadata(&pwd), std::fs::metadata("."))
        && (a.dev(), a.ino()) == (b.dev(), b.ino())
    {
        return Ok(pwd);
    }
    Ok(std::env::current_dir()?.to_string_lossy().into_owned())
}

/// Go's `filepath.Clean` on Unix: lexical `.`/`..`/`//` removal.
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// How many settings the flags changed; kopia refuses to save when none did.
#[derive(Default)]
struct Changes(usize);

impl Changes {
    fn note(&mut self, message: impl AsRef<str>) {
        self.0 += 1;
        eprintln!("{}", message.as_ref());
    }
}

const INHERIT: &str = "inherit";
const DEFAULT: &str = "default";

fn is_inherit(v: &str) -> bool {
    v == INHERIT || v == DEFAULT
}

/// Kopia's `setPolicyFromFlags`, section by section in kopia's order.
fn apply_flags(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    apply_retention(a, p, ch).context("retention policy")?;
    apply_files(a, p, ch).context("files policy")?;
    apply_error_handling(a, p, ch).context("error handling policy")?;
    apply_compression(a, p, ch).context("compression policy")?;
    apply_name(
        "metadata compression algorithm",
        &mut p.metadata_compression.compressor_name,
        &a.metadata_compression,
        ch,
    );
    if let Some(v) = &a.splitter {
        apply_name(
            "splitter algorithm override",
            &mut p.splitter.algorithm,
            &Some(v.clone()),
            ch,
        );
    }
    apply_scheduling(a, p, ch).context("scheduling policy")?;
    apply_actions(a, p, ch).context("actions policy")?;
    apply_os_snapshots(a, p, ch)?;
    apply_logging(a, p, ch).context("logging policy")?;
    apply_upload(a, p, ch).context("upload policy")?;
    // Kopia counts every occurrence as a change (without logging one); the last one wins.
    for &inherit in &a.inherit {
        ch.0 += 1;
        p.no_parent = !inherit;
    }
    Ok(())
}

fn apply_retention(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let r = &mut p.retention;
    for (desc, field, flag) in [
        (
            "number of annual backups to keep",
            &mut r.keep_annual,
            &a.keep_annual,
        ),
        (
            "number of monthly backups to keep",
            &mut r.keep_monthly,
            &a.keep_monthly,
        ),
        (
            "number of weekly backups to keep",
            &mut r.keep_weekly,
            &a.keep_weekly,
        ),
        (
            "number of daily backups to keep",
            &mut r.keep_daily,
            &a.keep_daily,
        ),
        (
            "number of hourly backups to keep",
            &mut r.keep_hourly,
            &a.keep_hourly,
        ),
        (
            "number of latest backups to keep",
            &mut r.keep_latest,
            &a.keep_latest,
        ),
    ] {
        apply_optional_int(desc, field, flag, 32, ch)?;
    }
    apply_optional_bool(
        "do not save identical snapshots",
        &mut r.ignore_identical_snapshots,
        &a.ignore_identical_snapshots,
        ch,
    )
}

fn apply_files(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let f = &mut p.files;
    apply_int64(
        "maximum file size",
        &mut f.max_file_size,
        &a.max_file_size,
        ch,
    )
    .context("maximum file size")?;
    apply_string_list(
        "dot-ignore filenames",
        &mut f.dot_ignore_files,
        &a.add_dot_ignore,
        &a.remove_dot_ignore,
        a.clear_dot_ignore,
        ch,
    );
    apply_string_list(
        "ignore rules",
        &mut f.ignore_rules,
        &a.add_ignore,
        &a.remove_ignore,
        a.clear_ignore,
        ch,
    );
    apply_optional_bool(
        "ignore cache dirs",
        &mut f.ignore_cache_dirs,
        &a.ignore_cache_dirs,
        ch,
    )?;
    apply_optional_bool(
        "one filesystem",
        &mut f.one_file_system,
        &a.one_file_system,
        ch,
    )
}

fn apply_error_handling(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let e = &mut p.error_handling;
    apply_optional_bool(
        "ignore file errors",
        &mut e.ignore_file_errors,
        &a.ignore_file_errors,
        ch,
    )
    .context("ignore file errors")?;
    apply_optional_bool(
        "ignore directory errors",
        &mut e.ignore_directory_errors,
        &a.ignore_dir_errors,
        ch,
    )
    .context("ignore directory errors")?;
    apply_optional_bool(
        "ignore unknown types",
        &mut e.ignore_unknown_types,
        &a.ignore_unknown_types,
        ch,
    )
    .context("ignore unknown types")
}

fn apply_compression(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let c = &mut p.compression;
    apply_int64(
        "minimum file size subject to compression",
        &mut c.min_size,
        &a.compression_min_size,
        ch,
    )?;
    apply_int64(
        "maximum file size subject to compression",
        &mut c.max_size,
        &a.compression_max_size,
        ch,
    )?;
    apply_name(
        "compression algorithm",
        &mut c.compressor_name,
        &a.compression,
        ch,
    );
    apply_string_list(
        "only-compress extensions",
        &mut c.only_compress,
        &a.add_only_compress,
        &a.remove_only_compress,
        a.clear_only_compress,
        ch,
    );
    apply_string_list(
        "never-compress extensions",
        &mut c.never_compress,
        &a.add_never_compress,
        &a.remove_never_compress,
        a.clear_never_compress,
        ch,
    );
    Ok(())
}

/// A compressor or splitter name: `inherit` clears it.
fn apply_name(desc: &str, field: &mut String, flag: &Option<String>, ch: &mut Changes) {
    let Some(v) = flag else { return };
    if v == INHERIT {
        field.clear();
        ch.note(format!(
            " - resetting {desc} to default value inherited from parent"
        ));
    } else {
        *field = v.clone();
        ch.note(format!(" - setting {desc} to {v}"));
    }
}

fn apply_scheduling(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let s = &mut p.scheduling;
    if a.manual {
        if !a.snapshot_interval.is_empty()
            || !a.snapshot_time.is_empty()
            || a.snapshot_time_crontab.is_some()
        {
            bail!("cannot set manual field when scheduling snapshots");
        }
        if s.interval_seconds != 0 {
            s.interval_seconds = 0;
            ch.note(" - resetting snapshot interval to default\n");
        }
        if !s.times_of_day.is_empty() {
            s.times_of_day.clear();
            ch.note(" - resetting snapshot times of day to default\n");
        }
        if !s.cron.is_empty() {
            s.cron.clear();
            ch.note(" - resetting cron snapshot times to default\n");
        }
        s.manual = true;
        ch.note(" - setting manual snapshot field to true\n");
        return Ok(());
    }
    // Only the first interval counts (kopia's flag is a list to make it optional).
    if let Some(interval) = a.snapshot_interval.first() {
        let d = go::parse_duration(interval)?;
        s.interval_seconds = go::duration_seconds(d);
        ch.note(format!(
            " - setting snapshot interval to {}",
            go::format_duration(s.interval_seconds.wrapping_mul(go::NANOS_PER_SECOND))
        ));
    }
    if !a.snapshot_time.is_empty() {
        let mut times: Option<Vec<TimeOfDay>> = None;
        for list in &a.snapshot_time {
            for item in list.split(',') {
                if item == INHERIT {
                    // Kopia drops what it collected and skips the rest of this argument.
                    times = None;
                    break;
                }
                let (hour, minute) =
                    go::parse_time_of_day(item).context("unable to parse time of day")?;
                times
                    .get_or_insert_with(Vec::new)
                    .push(TimeOfDay { hour, minute });
            }
        }
        let mut times = times.unwrap_or_default();
        times.sort();
        times.dedup();
        if times.is_empty() {
            ch.note(" - resetting snapshot times of day to default");
        } else {
            let shown: Vec<String> = times
                .iter()
                .map(|t| format!("{}:{:02}", t.hour, t.minute))
                .collect();
            ch.note(format!(
                " - setting snapshot times to [{}]",
                shown.join(" ")
            ));
        }
        s.times_of_day = times;
    }
    if let Some(cron) = &a.snapshot_time_crontab {
        let list = split_cron_expressions(cron);
        for e in &list {
            let expr = e.split('#').next().unwrap_or_default().trim();
            if !expr.is_empty() {
                cron::validate(expr).map_err(|_| {
                    anyhow::anyhow!("invalid scheduling policy: invalid cron expression {e:?}")
                })?;
            }
        }
        if list.is_empty() {
            ch.note(" - resetting cron snapshot times to default");
        } else {
            ch.note(format!(
                " - setting cron snapshot times to [{}]",
                list.join(" ")
            ));
        }
        s.cron = list;
    }
    apply_optional_bool("run missed snapshots", &mut s.run_missed, &a.run_missed, ch)
        .context("invalid run-missed value")?;
    // Quirk kept from kopia: any `policy set` without --manual turns manual scheduling off.
    if s.manual {
        s.manual = false;
        ch.note(" - resetting manual snapshot field to false\n");
    }
    Ok(())
}

/// Semicolon-separated expressions, blanks dropped; `inherit`/`default` clears the list.
fn split_cron_expressions(text: &str) -> Vec<String> {
    if is_inherit(text) {
        return Vec::new();
    }
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

const MAX_SCRIPT_LENGTH: usize = 32_000;

fn apply_actions(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let timeout = go::parse_duration(&a.action_command_timeout)?;
    let actions = &mut p.actions;
    for (name, field, flag) in [
        (
            "before-folder",
            &mut actions.before_folder,
            &a.before_folder_action,
        ),
        (
            "after-folder",
            &mut actions.after_folder,
            &a.after_folder_action,
        ),
        (
            "before-snapshot-root",
            &mut actions.before_snapshot_root,
            &a.before_snapshot_root_action,
        ),
        (
            "after-snapshot-root",
            &mut actions.after_snapshot_root,
            &a.after_snapshot_root_action,
        ),
    ] {
        // "-" is kopia's "not given".
        let Some(value) = flag.as_deref().filter(|v| *v != "-") else {
            continue;
        };
        if value.is_empty() {
            *field = None;
            ch.note(format!(" - removing {name} action"));
            continue;
        }
        let mut cmd = ActionCommand {
            timeout_seconds: go::duration_seconds(timeout),
            mode: a.action_command_mode.clone(),
            ..Default::default()
        };
        if a.persist_action_script {
            let script = std::fs::read(value).context("unable to read script file")?;
            if script.len() > MAX_SCRIPT_LENGTH {
                bail!(
                    "action script file ({value}) too long: {}, max allowed {MAX_SCRIPT_LENGTH}",
                    script.len()
                );
            }
            ch.note(format!(
                " - setting {name} ({}) action script from file {value} ({} bytes) with timeout {}",
                cmd.mode,
                script.len(),
                go::format_duration(timeout)
            ));
            cmd.script = String::from_utf8_lossy(&script).into_owned();
        } else {
            let fields =
                go::split_space_csv(value).with_context(|| format!("invalid {name}-action"))?;
            let Some((command, args)) = fields.split_first() else {
                bail!("invalid {name}-action: empty command");
            };
            cmd.command = command.clone();
            cmd.args = args.to_vec();
            ch.note(format!(
                " - setting {name} ({}) action command to \"{}\"{} and timeout {}",
                cmd.mode,
                cmd.command,
                if args.is_empty() {
                    String::new()
                } else {
                    let quoted: Vec<String> = args.iter().map(|s| format!("\"{s}\"")).collect();
                    format!(" with arguments {}", quoted.join(" "))
                },
                go::format_duration(timeout)
            ));
        }
        *field = Some(cmd);
    }
    Ok(())
}

fn apply_os_snapshots(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let Some(mode) = &a.enable_volume_shadow_copy else {
        return Ok(());
    };
    let desc = "enable volume shadow copy";
    let field = &mut p.os_snapshots.volume_shadow_copy.enable;
    let value = match mode.as_str() {
        m if is_inherit(m) => {
            *field = None;
            ch.note(format!(
                " - resetting {desc:?} to a default value inherited from parent."
            ));
            return Ok(());
        }
        "never" => 0,
        "always" => 1,
        "when-available" => 2,
        other => bail!("enable volume shadow copy: invalid {desc:?} mode {other:?}"),
    };
    *field = Some(value);
    ch.note(format!(" - setting {desc:?} to {mode}."));
    Ok(())
}

fn apply_logging(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let (d, e) = (&mut p.logging.directories, &mut p.logging.entries);
    for (desc, field, flag) in [
        (
            "directory snapshotted detail",
            &mut d.snapshotted,
            &a.log_dir_snapshotted,
        ),
        (
            "directory ignored detail",
            &mut d.ignored,
            &a.log_dir_ignored,
        ),
        (
            "entry snapshotted detail",
            &mut e.snapshotted,
            &a.log_entry_snapshotted,
        ),
        ("entry ignored detail", &mut e.ignored, &a.log_entry_ignored),
        (
            "entry cache hit detail",
            &mut e.cache_hit,
            &a.log_entry_cache_hit,
        ),
        (
            "entry cache miss detail",
            &mut e.cache_miss,
            &a.log_entry_cache_miss,
        ),
    ] {
        let Some(v) = flag else { continue };
        if v == INHERIT {
            *field = None;
            ch.note(format!(
                " - resetting {desc:?} to a default value inherited from parent."
            ));
            continue;
        }
        match go::parse_int(v, 64) {
            Some(n) if (0..=10).contains(&n) => {
                *field = Some(n);
                ch.note(format!(" - setting {desc:?} to {n}."));
            }
            _ => bail!("{desc}: must be >= 0 and <= 10 or \"inherit\""),
        }
    }
    Ok(())
}

fn apply_upload(a: &PolicySetArgs, p: &mut Policy, ch: &mut Changes) -> anyhow::Result<()> {
    let u = &mut p.upload;
    apply_optional_int(
        "max parallel file reads",
        &mut u.max_parallel_file_reads,
        &a.max_parallel_file_reads,
        32,
        ch,
    )?;
    apply_optional_int(
        "max parallel snapshots",
        &mut u.max_parallel_snapshots,
        &a.max_parallel_snapshots,
        32,
        ch,
    )?;
    let Some(v) = &a.parallel_upload_above_size_mib else {
        return Ok(());
    };
    let desc = "parallel upload above size";
    if is_inherit(v) {
        u.parallel_upload_above_size = None;
        ch.note(format!(
            " - resetting {desc:?} to a default value inherited from parent."
        ));
        return Ok(());
    }
    let mib = go::parse_int(v, 32).ok_or_else(|| parse_error(desc, v))?;
    let bytes = mib << 20;
    u.parallel_upload_above_size = Some(bytes);
    ch.note(format!(
        " - setting {desc:?} to {}.",
        go::bytes_string(bytes)
    ));
    Ok(())
}

fn parse_error(desc: &str, v: &str) -> anyhow::Error {
    anyhow::anyhow!("can't parse the {desc} {v:?}: invalid syntax or out of range")
}

/// An optional count: `inherit`/`default` clears it, otherwise a decimal of `bits` bits.
fn apply_optional_int(
    desc: &str,
    field: &mut Option<i64>,
    flag: &Option<String>,
    bits: u32,
    ch: &mut Changes,
) -> anyhow::Result<()> {
    let Some(v) = flag else { return Ok(()) };
    if is_inherit(v) {
        *field = None;
        ch.note(format!(
            " - resetting {desc:?} to a default value inherited from parent."
        ));
        return Ok(());
    }
    let n = go::parse_int(v, bits).ok_or_else(|| parse_error(desc, v))?;
    *field = Some(n);
    ch.note(format!(" - setting {desc:?} to {n}."));
    Ok(())
}

/// A plain 64-bit number: `inherit`/`default` resets it to 0.
fn apply_int64(
    desc: &str,
    field: &mut i64,
    flag: &Option<String>,
    ch: &mut Changes,
) -> anyhow::Result<()> {
    let Some(v) = flag else { return Ok(()) };
    if is_inherit(v) {
        *field = 0;
        ch.note(format!(
            " - resetting {desc:?} to a default value inherited from parent."
        ));
        return Ok(());
    }
    let n = go::parse_int(v, 64).ok_or_else(|| parse_error(desc, v))?;
    *field = n;
    ch.note(format!(" - setting {desc:?} to {n}."));
    Ok(())
}

fn apply_optional_bool(
    desc: &str,
    field: &mut Option<bool>,
    flag: &Option<String>,
    ch: &mut Changes,
) -> anyhow::Result<()> {
    let Some(v) = flag else { return Ok(()) };
    if is_inherit(v) {
        *field = None;
        ch.note(format!(
            " - resetting {desc:?} to a default value inherited from parent."
        ));
        return Ok(());
    }
    let b = go::parse_bool(v).ok_or_else(|| parse_error(desc, v))?;
    *field = Some(b);
    ch.note(format!(" - setting {desc:?} to {b}."));
    Ok(())
}

/// Kopia's `applyPolicyStringList`: clear, or add then remove; the result is sorted and unique.
fn apply_string_list(
    desc: &str,
    field: &mut Vec<String>,
    add: &[String],
    remove: &[String],
    clear: bool,
    ch: &mut Changes,
) {
    if clear {
        field.clear();
        ch.note(format!(" - removing all from {desc:?}"));
        return;
    }
    let mut set: BTreeSet<String> = field.drain(..).collect();
    for v in add {
        ch.note(format!(" - adding {v:?} to {desc:?}"));
        set.insert(v.clone());
    }
    for v in remove {
        ch.note(format!(" - removing {v:?} from {desc:?}"));
        set.remove(v);
    }
    *field = set.into_iter().collect();
}

/// `kopia policy show` without `--json`: a table of effective values and where each came from.
fn show_text(target: &SourceInfo, p: &Policy, def: &Definition) -> String {
    let mut t = Table {
        target,
        def,
        rows: Vec::new(),
    };
    t.retention(p);
    t.blank();
    t.files(p);
    t.blank();
    t.error_handling(p);
    t.blank();
    t.scheduling(p);
    t.blank();
    t.upload(p);
    t.blank();
    t.compression(p);
    t.blank();
    t.metadata_compression(p);
    t.blank();
    t.splitter(p);
    t.blank();
    t.actions(p);
    t.blank();
    t.os_snapshots(p);
    t.blank();
    t.logging(p);
    t.render()
}

struct Table<'a> {
    target: &'a SourceInfo,
    def: &'a Definition,
    rows: Vec<(String, String, String)>,
}

fn bool_text(v: bool) -> String {
    v.to_string()
}

fn count_text(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

impl Table<'_> {
    fn row(&mut self, name: impl Into<String>, value: impl Into<String>, def: impl Into<String>) {
        self.rows.push((name.into(), value.into(), def.into()));
    }

    fn text(&mut self, name: impl Into<String>) {
        self.row(name, "", "");
    }

    fn blank(&mut self) {
        self.text("");
    }

    /// A field's value and where it was defined (fields defined nowhere count as global).
    fn field(&mut self, name: &str, value: String, key: &str) {
        let d = self.origin(key);
        self.row(name, value, d);
    }

    fn origin(&self, key: &str) -> String {
        let src = self.def.source_of(key).cloned().unwrap_or_default();
        if &src == self.target {
            "(defined for this target)".to_string()
        } else {
            format!("inherited from {src}")
        }
    }

    fn retention(&mut self, p: &Policy) {
        let r = &p.retention;
        self.text("Retention:");
        self.field(
            "  Annual snapshots:",
            count_text(r.keep_annual),
            "retention.keepAnnual",
        );
        self.field(
            "  Monthly snapshots:",
            count_text(r.keep_monthly),
            "retention.keepMonthly",
        );
        self.field(
            "  Weekly snapshots:",
            count_text(r.keep_weekly),
            "retention.keepWeekly",
        );
        self.field(
            "  Daily snapshots:",
            count_text(r.keep_daily),
            "retention.keepDaily",
        );
        self.field(
            "  Hourly snapshots:",
            count_text(r.keep_hourly),
            "retention.keepHourly",
        );
        self.field(
            "  Latest snapshots:",
            count_text(r.keep_latest),
            "retention.keepLatest",
        );
        self.field(
            "  Ignore identical snapshots:",
            bool_text(r.ignore_identical_snapshots.unwrap_or(false)),
            "retention.ignoreIdenticalSnapshots",
        );
    }

    fn files(&mut self, p: &Policy) {
        let f = &p.files;
        self.text("Files policy:");
        self.field(
            "  Ignore cache directories:",
            bool_text(f.ignore_cache_dirs.unwrap_or(true)),
            "files.ignoreCacheDirs",
        );
        if f.ignore_rules.is_empty() {
            self.text("  No ignore rules:");
        } else {
            let d = self.origin("files.ignore");
            self.row("  Ignore rules:", "", d);
            for rule in &f.ignore_rules {
                self.text(format!("    {rule}"));
            }
        }
        if !f.dot_ignore_files.is_empty() {
            let d = self.origin("files.ignoreDotFiles");
            self.row("  Read ignore rules from files:", "", d);
            for name in &f.dot_ignore_files {
                self.text(format!("    {name}"));
            }
        }
        if f.max_file_size > 0 {
            self.field(
                "  Ignore files above:",
                go::bytes_string(f.max_file_size),
                "files.maxFileSize",
            );
        }
        self.field(
            "  Scan one filesystem only:",
            bool_text(f.one_file_system.unwrap_or(false)),
            "files.oneFileSystem",
        );
    }

    fn error_handling(&mut self, p: &Policy) {
        let e = &p.error_handling;
        self.text("Error handling policy:");
        self.field(
            "  Ignore file read errors:",
            bool_text(e.ignore_file_errors.unwrap_or(false)),
            "errorHandling.ignoreFileErrors",
        );
        self.field(
            "  Ignore directory read errors:",
            bool_text(e.ignore_directory_errors.unwrap_or(false)),
            "errorHandling.ignoreDirectoryErrors",
        );
        self.field(
            "  Ignore unknown types:",
            bool_text(e.ignore_unknown_types.unwrap_or(true)),
            "errorHandling.ignoreUnknownTypes",
        );
    }

    fn scheduling(&mut self, p: &Policy) {
        let s = &p.scheduling;
        self.text("Scheduling policy:");
        self.text("  Scheduled snapshots:");
        let mut any = false;
        let interval = s.interval_seconds.wrapping_mul(go::NANOS_PER_SECOND);
        if interval != 0 {
            self.field(
                "    Snapshot interval:",
                go::format_duration(interval),
                "scheduling.intervalSeconds",
            );
            any = true;
        }
        if !s.times_of_day.is_empty() {
            self.field(
                "  Run missed snapshots:",
                bool_text(s.run_missed.unwrap_or(false)),
                "scheduling.runMissed",
            );
            let d = self.origin("scheduling.timeOfDay");
            self.row("  Snapshot times:", "", d);
            for t in &s.times_of_day {
                self.text(format!("    {}:{:02}", t.hour, t.minute));
            }
            any = true;
        }
        if !s.cron.is_empty() {
            let d = self.origin("scheduling.cron");
            self.row("  Crontab expressions:", "", d);
            for c in &s.cron {
                self.text(format!("    {c}"));
            }
            any = true;
        }
        if !any {
            self.text("    None.");
        }
        self.field(
            "  Manual snapshot:",
            bool_text(s.manual),
            "scheduling.manual",
        );
    }

    fn upload(&mut self, p: &Policy) {
        let u = &p.upload;
        self.text("Uploads:");
        self.field(
            "  Max parallel snapshots (server/UI):",
            count_text(u.max_parallel_snapshots),
            "upload.maxParallelSnapshots",
        );
        self.field(
            "  Max parallel file reads:",
            count_text(u.max_parallel_file_reads),
            "upload.maxParallelFileReads",
        );
        self.field(
            "  Parallel upload above size:",
            u.parallel_upload_above_size
                .map_or_else(|| "-".to_string(), go::bytes_string),
            "upload.parallelUploadAboveSize",
        );
    }

    fn compression(&mut self, p: &Policy) {
        let c = &p.compression;
        if c.compressor_name.is_empty() || c.compressor_name == "none" {
            self.text("Compression disabled.");
            return;
        }
        self.text("Compression:");
        self.field(
            "  Compressor:",
            c.compressor_name.clone(),
            "compression.compressorName",
        );
        if !c.only_compress.is_empty() {
            let d = self.origin("compression.onlyCompress");
            self.row(
                "  Only compress files with the following extensions:",
                "",
                d,
            );
            for ext in &c.only_compress {
                self.text(format!("     - {ext}"));
            }
        } else if !c.never_compress.is_empty() {
            let d = self.origin("compression.neverCompress");
            self.row(
                "  Compress all files except the following extensions:",
                "",
                d,
            );
            for ext in &c.never_compress {
                self.text(format!("    {ext}"));
            }
        } else {
            self.text("  Compress files regardless of extensions.");
        }
        if c.max_size > 0 {
            self.text(format!(
                "  Only compress files between {} and {}.",
                go::bytes_string(c.min_size),
                go::bytes_string(c.max_size)
            ));
        } else if c.min_size > 0 {
            self.text(format!(
                "  Only compress files bigger than {}.",
                go::bytes_string(c.min_size)
            ));
        } else {
            self.text("  Compress files of all sizes.");
        }
    }

    fn metadata_compression(&mut self, p: &Policy) {
        let name = &p.metadata_compression.compressor_name;
        if name.is_empty() || name == "none" {
            self.text("Metadata compression disabled.");
            return;
        }
        self.text("Metadata compression:");
        self.field(
            "  Compressor:",
            name.clone(),
            "metadataCompression.compressorName",
        );
    }

    fn splitter(&mut self, p: &Policy) {
        let algorithm = match p.splitter.algorithm.as_str() {
            "" => "(repository default)".to_string(),
            a => a.to_string(),
        };
        self.text("Splitter:");
        self.field("  Algorithm override:", algorithm, "splitter.algorithm");
    }

    fn actions(&mut self, p: &Policy) {
        let a = &p.actions;
        let mut any = false;
        if let Some(c) = &a.before_snapshot_root {
            let d = self.origin("actions.beforeSnapshotRoot");
            self.row("Run command before snapshot root:", "", d);
            self.action(c);
            any = true;
        }
        if let Some(c) = &a.after_snapshot_root {
            let d = self.origin("actions.afterSnapshotRoot");
            self.row("Run command after snapshot root:", "", d);
            self.action(c);
            any = true;
        }
        if let Some(c) = &a.before_folder {
            self.row("Run command before this folder:", "", "(non-inheritable)");
            self.action(c);
            any = true;
        }
        if let Some(c) = &a.after_folder {
            self.row("Run command after this folder:", "", "(non-inheritable)");
            self.action(c);
            any = true;
        }
        if !any {
            self.text("No actions defined.");
        }
    }

    fn action(&mut self, c: &ActionCommand) {
        if c.script.is_empty() {
            self.text("  Command:");
            self.text(format!("    {} {}", c.command, c.args.join(" ")));
        } else {
            self.text("  Embedded script (stored in repository):");
            let lines: Vec<String> = c.script.lines().map(|l| format!("    {l}")).collect();
            self.text(lines.join("\n"));
        }
        let mode = if c.mode.is_empty() {
            "sync"
        } else {
            c.mode.as_str()
        };
        self.row("  Mode:", mode, "");
        self.row(
            "  Timeout:",
            go::format_duration(c.timeout_seconds.wrapping_mul(go::NANOS_PER_SECOND)),
            "",
        );
        self.blank();
    }

    fn os_snapshots(&mut self, p: &Policy) {
        let mode = match p.os_snapshots.volume_shadow_copy.enable {
            Some(1) => "always",
            Some(2) => "when-available",
            _ => "never",
        };
        self.text("OS-level snapshot support:");
        self.field(
            "  Volume Shadow Copy:",
            mode.to_string(),
            "osSnapshots.volumeShadowCopy.enable",
        );
    }

    fn logging(&mut self, p: &Policy) {
        let (d, e) = (&p.logging.directories, &p.logging.entries);
        let level = |v: Option<i64>| v.unwrap_or(0).to_string();
        self.text("Logging details (0-none, 10-maximum):");
        self.field(
            "  Directory snapshotted:",
            level(d.snapshotted),
            "logging.directories.snapshotted",
        );
        self.field(
            "  Directory ignored:",
            level(d.ignored),
            "logging.directories.ignored",
        );
        self.field(
            "  Entry snapshotted:",
            level(e.snapshotted),
            "logging.entries.snapshotted",
        );
        self.field(
            "  Entry ignored:",
            level(e.ignored),
            "logging.entries.ignored",
        );
        self.field(
            "  Entry cache hit:",
            level(e.cache_hit),
            "logging.entries.cacheHit",
        );
        self.field(
            "  Entry cache miss:",
            level(e.cache_miss),
            "logging.entries.cacheMiss",
        );
    }

    /// Kopia's `alignedPolicyTableRows`: values right-aligned to the widest "name   value".
    fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .filter(|(_, v, _)| !v.is_empty())
            .map(|(n, v, _)| n.len() + 3 + v.len())
            .max()
            .unwrap_or(0);
        let lines: Vec<String> = self
            .rows
            .iter()
            .map(|(name, value, def)| {
                let mut l = name.clone();
                if !value.is_empty() || !def.is_empty() {
                    let pad = width.saturating_sub(l.len() + value.len());
                    l.push_str(&" ".repeat(pad));
                    l.push_str(value);
                }
                if !def.is_empty() {
                    l.push_str("   ");
                    l.push_str(def);
                }
                l
            })
            .collect();
        lines.join("\n")
    }
}

/// Go standard-library behaviours kopia's CLI inherits: number, bool and duration syntax, the
/// `fmt.Sscanf("%v:%02v")` time-of-day reader, space-separated CSV, and byte-size display.
pub(crate) mod go {
    pub const NANOS_PER_SECOND: i64 = 1_000_000_000;

    /// `strconv.ParseInt(s, 10, bits)`: optional sign, ASCII digits, range-checked.
    pub fn parse_int(s: &str, bits: u32) -> Option<i64> {
        let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let v: i64 = s.parse().ok()?;
        let limit = 1i128 << (bits - 1);
        (i128::from(v) >= -limit && i128::from(v) < limit).then_some(v)
    }

    /// `strconv.ParseBool`.
    pub fn parse_bool(s: &str) -> Option<bool> {
        match s {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
            _ => None,
        }
    }

    /// `time.ParseDuration`, in nanoseconds.
    pub fn parse_duration(orig: &str) -> anyhow::Result<i64> {
        let invalid = || anyhow::anyhow!("time: invalid duration {orig:?}");
        let (neg, mut s) = match orig.as_bytes().first() {
            Some(b'-') => (true, &orig[1..]),
            Some(b'+') => (false, &orig[1..]),
            _ => (false, orig),
        };
        if s == "0" {
            return Ok(0);
        }
        if s.is_empty() {
            return Err(invalid());
        }
        const LIMIT: u64 = 1 << 63;
        let mut total: u64 = 0;
        while !s.is_empty() {
            let b = s.as_bytes();
            if !(b[0] == b'.' || b[0].is_ascii_digit()) {
                return Err(invalid());
            }
            let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let mut v: u64 = 0;
            for &c in &b[..int_len] {
                if v > LIMIT / 10 {
                    return Err(invalid());
                }
                v = v * 10 + u64::from(c - b'0');
                if v > LIMIT {
                    return Err(invalid());
                }
            }
            s = &s[int_len..];
            let (mut frac, mut scale, mut frac_len) = (0u64, 1f64, 0usize);
            let mut had_dot = false;
            if s.starts_with('.') {
                had_dot = true;
                s = &s[1..];
                let fb = s.as_bytes();
                frac_len = fb.iter().take_while(|c| c.is_ascii_digit()).count();
                let mut overflow = false;
                for &c in &fb[..frac_len] {
                    if overflow {
                        continue;
                    }
                    if frac > (LIMIT - 1) / 10 {
                        overflow = true;
                        continue;
                    }
                    let y = frac * 10 + u64::from(c - b'0');
                    if y > LIMIT {
                        overflow = true;
                        continue;
                    }
                    frac = y;
                    scale *= 10.0;
                }
                s = &s[frac_len..];
            }
            if int_len == 0 && (!had_dot || frac_len == 0) {
                return Err(invalid());
            }
            let unit_len = s
                .char_indices()
                .find(|(_, c)| *c == '.' || c.is_ascii_digit())
                .map_or(s.len(), |(i, _)| i);
            if unit_len == 0 {
                bail_missing_unit(orig)?;
            }
            let unit_name = &s[..unit_len];
            s = &s[unit_len..];
            let unit: u64 = match unit_name {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => anyhow::bail!("time: unknown unit {unit_name:?} in duration {orig:?}"),
            };
            if v > LIMIT / unit {
                return Err(invalid());
            }
            v *= unit;
            if frac > 0 {
                v += (frac as f64 * (unit as f64 / scale)) as u64;
                if v > LIMIT {
                    return Err(invalid());
                }
            }
            total += v;
            if total > LIMIT {
                return Err(invalid());
            }
        }
        if neg {
            return Ok((total as i64).wrapping_neg());
        }
        i64::try_from(total).map_err(|_| invalid())
    }

    fn bail_missing_unit(orig: &str) -> anyhow::Result<()> {
        anyhow::bail!("time: missing unit in duration {orig:?}")
    }

    /// `int64(d.Seconds())` for a duration in nanoseconds.
    pub fn duration_seconds(ns: i64) -> i64 {
        let secs = ns / NANOS_PER_SECOND;
        let nanos = ns % NANOS_PER_SECOND;
        (secs as f64 + nanos as f64 / 1e9) as i64
    }

    /// `time.Duration.String`, e.g. `1h30m0s`, `1.5s`, `300ms`, `0s`.
    pub fn format_duration(ns: i64) -> String {
        let neg = ns < 0;
        let mut u = ns.unsigned_abs();
        let mut out = String::new();
        if u < 1_000_000_000 {
            let (prec, unit) = match u {
                0 => return "0s".to_string(),
                1..=999 => (0, "ns"),
                1_000..=999_999 => (3, "\u{b5}s"),
                _ => (6, "ms"),
            };
            let (whole, frac) = split_frac(u, prec);
            out.push_str(&whole.to_string());
            out.push_str(&frac);
            out.push_str(unit);
        } else {
            let (secs, frac) = split_frac(u, 9);
            u = secs;
            let mut text = format!("{}{frac}s", u % 60);
            u /= 60;
            if u > 0 {
                text = format!("{}m{text}", u % 60);
                u /= 60;
                if u > 0 {
                    text = format!("{u}h{text}");
                }
            }
            out.push_str(&text);
        }
        if neg {
            out.insert(0, '-');
        }
        out
    }

    /// `v / 10^prec` and the fraction as `.ddd` without trailing zeros (empty when zero).
    fn split_frac(v: u64, prec: u32) -> (u64, String) {
        let scale = 10u64.pow(prec);
        let frac = v % scale;
        if frac == 0 {
            return (v / scale, String::new());
        }
        let digits = format!("{frac:0width$}", width = prec as usize);
        (v / scale, format!(".{}", digits.trim_end_matches('0')))
    }

    /// Kopia's `units.BytesString`: base 10 (`2.1 GB`) unless `KOPIA_BYTES_STRING_BASE_2` is true.
    pub fn bytes_string(b: i64) -> String {
        let base2 = std::env::var("KOPIA_BYTES_STRING_BASE_2")
            .ok()
            .and_then(|v| parse_bool(&v))
            .unwrap_or(false);
        let (thousand, prefixes): (f64, [&str; 7]) = if base2 {
            (1024.0, ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
        } else {
            (1000.0, ["", "K", "M", "G", "T", "P", "E"])
        };
        let mut f = b as f64;
        for p in &prefixes {
            if f < 0.9 * thousand {
                return format!("{} {p}B", nice_number(f));
            }
            f /= thousand;
        }
        format!("{} {}B", nice_number(f), prefixes[prefixes.len() - 1])
    }

    fn nice_number(f: f64) -> String {
        let s = format!("{f:.1}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }

    /// `fmt.Sscanf(s, "%v:%02v", &hour, &minute)` followed by kopia's range checks.
    pub fn parse_time_of_day(s: &str) -> anyhow::Result<(i64, i64)> {
        let malformed = || anyhow::anyhow!("invalid time of day, must be HH:MM");
        let mut sc = Scanner {
            chars: s.chars().collect(),
            pos: 0,
            limit: usize::MAX,
        };
        let hour = sc.int(None).ok_or_else(malformed)?;
        if sc.next() != Some(':') {
            return Err(malformed());
        }
        let minute = sc.int(Some(2)).ok_or_else(malformed)?;
        if !(0..=23).contains(&hour) {
            anyhow::bail!("invalid hour {s:?}, must be between 0 and 23");
        }
        if !(0..=59).contains(&minute) {
            anyhow::bail!("invalid minute {s:?}, must be between 0 and 59");
        }
        Ok((hour, minute))
    }

    /// Just enough of Go's `fmt` scanner for `%v` integers.
    struct Scanner {
        chars: Vec<char>,
        pos: usize,
        limit: usize,
    }

    impl Scanner {
        fn peek(&self) -> Option<char> {
            (self.pos < self.limit)
                .then(|| self.chars.get(self.pos).copied())
                .flatten()
        }

        fn next(&mut self) -> Option<char> {
            let c = self.peek()?;
            self.pos += 1;
            Some(c)
        }

        fn accept(&mut self, set: &str, token: &mut String) -> bool {
            match self.peek() {
                Some(c) if set.contains(c) => {
                    token.push(c);
                    self.pos += 1;
                    true
                }
                _ => false,
            }
        }

        /// `%v` (or `%Nv`) into an `int`: spaces skipped (not counted in the width), a sign,
        /// a `0b`/`0o`/`0x`/`0` base prefix, digits and underscores, then `strconv.ParseInt(_, 0, 64)`.
        fn int(&mut self, width: Option<usize>) -> Option<i64> {
            while let Some(c) = self.peek() {
                if c == '\n' {
                    return None;
                }
                if !is_go_space(c) {
                    break;
                }
                self.pos += 1;
            }
            self.limit = width.map_or(usize::MAX, |w| self.pos + w);
            self.peek()?;
            let mut token = String::new();
            self.accept("+-", &mut token);
            let (digits, have_digits) = if self.accept("0", &mut token) {
                if self.accept("bB", &mut token) {
                    ("01_", true)
                } else if self.accept("oO", &mut token) {
                    ("01234567_", true)
                } else if self.accept("xX", &mut token) {
                    ("0123456789aAbBcCdDeEfF_", true)
                } else {
                    ("01234567_", true)
                }
            } else {
                ("0123456789_", false)
            };
            if !have_digits && !self.accept(digits, &mut token) {
                return None;
            }
            while self.accept(digits, &mut token) {}
            self.limit = usize::MAX;
            parse_int_base0(&token)
        }
    }

    fn is_go_space(c: char) -> bool {
        matches!(
            c,
            '\t' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'
                ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
        )
    }

    /// `strconv.ParseInt(s, 0, 64)`: sign, base prefix (`0x`, `0o`, `0b`, or a leading `0` for
    /// octal), digits with Go's underscore rules.
    fn parse_int_base0(s: &str) -> Option<i64> {
        let (neg, body) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        if body.is_empty() || !underscores_ok(body) {
            return None;
        }
        let lower = body.to_ascii_lowercase();
        // A two-letter prefix needs at least one character after it ("0x" alone is octal "x").
        let prefixed = |p: &str| lower.strip_prefix(p).filter(|rest| !rest.is_empty());
        let (radix, digits) = if let Some(rest) = prefixed("0x") {
            (16, rest)
        } else if let Some(rest) = prefixed("0o") {
            (8, rest)
        } else if let Some(rest) = prefixed("0b") {
            (2, rest)
        } else if let Some(rest) = lower.strip_prefix('0') {
            (8, rest)
        } else {
            (10, lower.as_str())
        };
        let mut v: i128 = 0;
        for c in digits.chars().filter(|c| *c != '_') {
            v = v * radix + i128::from(c.to_digit(radix as u32)?);
            if v > i128::from(i64::MAX) + 1 {
                return None;
            }
        }
        let v = if neg { -v } else { v };
        i64::try_from(v).ok()
    }

    /// Go's `underscoreOK`: underscores only between digits (a base prefix counts as a digit).
    fn underscores_ok(s: &str) -> bool {
        let b = s.as_bytes();
        let mut saw = b'^';
        let mut i = 0;
        let mut hex = false;
        if b.len() >= 2 && b[0] == b'0' && matches!(b[1] | 0x20, b'b' | b'o' | b'x') {
            i = 2;
            saw = b'0';
            hex = b[1] | 0x20 == b'x';
        }
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_digit() || (hex && (c | 0x20).is_ascii_hexdigit()) {
                saw = b'0';
            } else if c == b'_' {
                if saw != b'0' {
                    return false;
                }
                saw = b'_';
            } else {
                if saw == b'_' {
                    return false;
                }
                saw = b'!';
            }
            i += 1;
        }
        saw != b'_'
    }

    /// The first record of Go's `encoding/csv` with a space as separator (kopia's action
    /// commands): blank lines skipped, quoted fields may hold spaces, newlines and `""` quotes; a
    /// bare `"` inside an unquoted field is an error.
    pub fn split_space_csv(text: &str) -> anyhow::Result<Vec<String>> {
        const MISPLACED_QUOTE: &str = "extraneous or missing \" in quoted-field";
        let text = text.replace("\r\n", "\n");
        let mut rest = text.trim_start_matches('\n');
        if rest.is_empty() {
            anyhow::bail!("EOF");
        }
        let mut fields = Vec::new();
        loop {
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut field = String::new();
                let mut chars = quoted.char_indices();
                let after = loop {
                    match chars.next() {
                        None => anyhow::bail!(MISPLACED_QUOTE),
                        Some((i, '"')) if quoted[i + 1..].starts_with('"') => {
                            field.push('"');
                            chars.next();
                        }
                        Some((i, '"')) => break &quoted[i + 1..],
                        Some((_, c)) => field.push(c),
                    }
                };
                fields.push(field);
                if let Some(r) = after.strip_prefix(' ') {
                    rest = r;
                } else if after.is_empty() || after.starts_with('\n') {
                    break;
                } else {
                    anyhow::bail!(MISPLACED_QUOTE);
                }
            } else {
                let end = rest.find([' ', '\n']).unwrap_or(rest.len());
                let field = &rest[..end];
                if field.contains('"') {
                    anyhow::bail!("bare \" in non-quoted-field");
                }
                fields.push(field.to_string());
                match rest[end..].strip_prefix(' ') {
                    Some(r) => rest = r,
                    None => break,
                }
            }
        }
        Ok(fields)
    }
}

/// Validation of cron expressions exactly as kopia's scheduler library (`hashicorp/cronexpr`
/// v1.1.3) parses them; only acceptance matters here, not the schedule.
mod cron {
    #[derive(Clone, Copy, PartialEq)]
    enum Field {
        Second,
        Minute,
        Hour,
        DayOfMonth,
        Month,
        DayOfWeek,
        Year,
    }

    const MONTH_NAMES: &[&str] = &[
        "jan",
        "feb",
        "mar",
        "apr",
        "may",
        "jun",
        "jul",
        "aug",
        "sep",
        "oct",
        "nov",
        "dec",
        "january",
        "february",
        "march",
        "april",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    const DAY_NAMES: &[&str] = &[
        "sun",
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];

    impl Field {
        fn max(self) -> i64 {
            match self {
                Field::Second | Field::Minute => 59,
                Field::Hour => 23,
                Field::DayOfMonth => 31,
                Field::Month => 12,
                Field::DayOfWeek => 6,
                Field::Year => 2099,
            }
        }

        /// Whether `s` (lower-cased) matches the field's value pattern.
        fn is_value(self, s: &str) -> bool {
            let b = s.as_bytes();
            let d = |i: usize, lo: u8, hi: u8| b.get(i).is_some_and(|c| (lo..=hi).contains(c));
            let one_or_zero_padded = |lo: u8, hi: u8| {
                (b.len() == 1 && d(0, lo, hi)) || (b.len() == 2 && b[0] == b'0' && d(1, lo, hi))
            };
            match self {
                Field::Second | Field::Minute => {
                    one_or_zero_padded(b'0', b'9')
                        || (b.len() == 2 && d(0, b'1', b'5') && d(1, b'0', b'9'))
                }
                Field::Hour => {
                    one_or_zero_padded(b'0', b'9')
                        || (b.len() == 2 && b[0] == b'1' && d(1, b'0', b'9'))
                        || (b.len() == 2 && b[0] == b'2' && d(1, b'0', b'3'))
                }
                Field::DayOfMonth => {
                    one_or_zero_padded(b'1', b'9')
                        || (b.len() == 2 && d(0, b'1', b'2') && d(1, b'0', b'9'))
                        || (b.len() == 2 && b[0] == b'3' && d(1, b'0', b'1'))
                }
                Field::Month => {
                    one_or_zero_padded(b'1', b'9')
                        || (b.len() == 2 && b[0] == b'1' && d(1, b'0', b'2'))
                        || MONTH_NAMES.contains(&s)
                }
                Field::DayOfWeek => one_or_zero_padded(b'0', b'7') || DAY_NAMES.contains(&s),
                Field::Year => {
                    b.len() == 4
                        && ((b[0] == b'1' && b[1] == b'9' && d(2, b'7', b'9') && d(3, b'0', b'9'))
                            || (b[0] == b'2'
                                && b[1] == b'0'
                                && d(2, b'0', b'9')
                                && d(3, b'0', b'9')))
                }
            }
        }
    }

    /// The library's number table: 0-59 (also zero-padded 00-09) and 1970-2099; others are 0.
    fn table_number(s: &str) -> i64 {
        let known = match s.len() {
            1 => true,
            2 => s.as_bytes()[0] == b'0' || s < "60",
            4 => ("1970"..="2099").contains(&s),
            _ => false,
        };
        if known { s.parse().unwrap_or(0) } else { 0 }
    }

    enum Entry {
        Wildcard,
        Plain,
        Other,
    }

    /// `/N` steps must be a listed number between 1 and the field's maximum.
    fn step_ok(step: &str, field: Field) -> Option<bool> {
        if step.is_empty() || !step.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let n = table_number(step);
        Some((1..=field.max()).contains(&n))
    }

    /// One comma-separated entry: `*`/`?`, `v`, `v-v`, `*/n`, `v/n`, `v-v/n`; anything else is
    /// left to the day fields' special forms. A bad step is an error at once.
    fn classify(entry: &str, field: Field) -> Result<Entry, ()> {
        if entry == "*" || entry == "?" {
            return Ok(Entry::Wildcard);
        }
        if field.is_value(entry) {
            return Ok(Entry::Plain);
        }
        let is_range = |s: &str| {
            s.split_once('-')
                .is_some_and(|(a, b)| field.is_value(a) && field.is_value(b))
        };
        if is_range(entry) {
            return Ok(Entry::Plain);
        }
        if let Some((span, step)) = entry.split_once('/') {
            let span_ok = span == "*" || field.is_value(span) || is_range(span);
            if span_ok && let Some(ok) = step_ok(step, field) {
                return if ok { Ok(Entry::Plain) } else { Err(()) };
            }
        }
        Ok(Entry::Other)
    }

    fn field_ok(text: &str, field: Field) -> bool {
        let entries: Vec<String> = text
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_lowercase)
            .collect();
        if entries.is_empty() {
            return false;
        }
        let mut kinds = Vec::with_capacity(entries.len());
        for e in &entries {
            match classify(e, field) {
                Ok(k) => kinds.push(k),
                Err(()) => return false,
            }
        }
        for (e, kind) in entries.iter().zip(kinds) {
            match kind {
                Entry::Plain => {}
                // The generic fields stop checking at the first wildcard.
                Entry::Wildcard if !matches!(field, Field::DayOfMonth | Field::DayOfWeek) => {
                    return true;
                }
                Entry::Wildcard => {}
                Entry::Other => {
                    let special = match field {
                        Field::DayOfMonth => {
                            e == "l"
                                || e == "lw"
                                || e.strip_suffix('w').is_some_and(|v| field.is_value(v))
                        }
                        Field::DayOfWeek => {
                            e.strip_suffix('l').is_some_and(|v| field.is_value(v))
                                || e.split_once('#').is_some_and(|(v, n)| {
                                    field.is_value(v) && matches!(n, "1" | "2" | "3" | "4" | "5")
                                })
                        }
                        _ => false,
                    };
                    if !special {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// The `@` aliases are replaced wherever they occur, as the library's string replacer does.
    fn normalize(expr: &str) -> String {
        const ALIASES: [(&str, &str); 6] = [
            ("@yearly", "0 0 0 1 1 * *"),
            ("@annually", "0 0 0 1 1 * *"),
            ("@monthly", "0 0 0 1 * * *"),
            ("@weekly", "0 0 0 * * 0 *"),
            ("@daily", "0 0 0 * * * *"),
            ("@hourly", "0 0 * * * * *"),
        ];
        let mut out = String::with_capacity(expr.len());
        let mut rest = expr;
        'outer: while let Some(c) = rest.chars().next() {
            for (alias, replacement) in ALIASES {
                if let Some(after) = rest.strip_prefix(alias) {
                    out.push_str(replacement);
                    rest = after;
                    continue 'outer;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// Whether `cronexpr.Parse` accepts `expr`.
    pub fn validate(expr: &str) -> Result<(), String> {
        let normalized = normalize(expr);
        // RE2's `\S`: anything but ASCII tab, newline, form feed, carriage return and space.
        let fields: Vec<&str> = normalized
            .split(['\t', '\n', '\u{c}', '\r', ' '])
            .filter(|f| !f.is_empty())
            .collect();
        if fields.len() < 5 {
            return Err("missing field(s)".into());
        }
        let fields = &fields[..fields.len().min(7)];
        let mut layout = vec![
            Field::Minute,
            Field::Hour,
            Field::DayOfMonth,
            Field::Month,
            Field::DayOfWeek,
        ];
        if fields.len() == 7 {
            layout.insert(0, Field::Second);
        }
        if fields.len() >= 6 {
            layout.push(Field::Year);
        }
        for (text, field) in fields.iter().zip(layout) {
            if !field_ok(text, field) {
                return Err(format!("syntax error in field {text:?}"));
            }
        }
        Ok(())
    }
}

/// A JSON string literal escaped as Go's encoder writes it.
fn go_escape(s: &str) -> String {
    String::from_utf8(kmover_format::gojson::to_vec(s).unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_targets_parse_like_kopia() {
        let p = |t: &str| parse_source_info(t, "myhost", "me").unwrap();
        assert_eq!(p("(global)"), SourceInfo::default());
        assert_eq!(
            p("u@h:/a/b"),
            SourceInfo {
                user_name: "u".into(),
                host: "h".into(),
                path: "/a/b".into()
            }
        );
        assert_eq!(
            p("u@h"),
            SourceInfo {
                user_name: "u".into(),
                host: "h".into(),
                path: String::new()
            }
        );
        assert_eq!(
            p("@h"),
            SourceInfo {
                user_name: String::new(),
                host: "h".into(),
                path: String::new()
            }
        );
        assert_eq!(
            p("/x/./y//z/../w/"),
            SourceInfo {
                user_name: "me".into(),
                host: "myhost".into(),
                path: "/x/y/w".into()
            }
        );
        assert!(parse_source_info("u@", "h", "u").is_err());
        // "@h:/p" has its '@' at 0, so kopia treats it as a relative local path.
        assert!(p("@h:/p").path.ends_with("/@h:/p"));
        assert_eq!(go_clean("/../a/.."), "/");
        assert_eq!(go_clean("a/../../b"), "../b");
    }

    #[test]
    fn time_of_day_follows_go_sscanf() {
        let ok = |s: &str| go::parse_time_of_day(s).ok();
        // Checked against kopia 0.22.3's `policy set --snapshot-time`.
        assert_eq!(ok("9:30"), Some((9, 30)));
        assert_eq!(ok("9:5"), Some((9, 5)));
        assert_eq!(ok("09:30"), None);
        assert_eq!(ok("09:05"), None);
        assert_eq!(ok("0x1:3"), Some((1, 3)));
        assert_eq!(ok(" 9:30"), Some((9, 30)));
        assert_eq!(ok("9:30x"), Some((9, 30)));
        assert_eq!(ok("9:030"), Some((9, 3)));
        assert_eq!(ok("+1:30"), Some((1, 30)));
        assert_eq!(ok("9:08"), Some((9, 0)));
        assert_eq!(ok("1_0:30"), Some((10, 30)));
        assert_eq!(ok("0b11:0o1"), None);
        assert_eq!(ok("9: 30"), Some((9, 30)));
        assert_eq!(ok("9:  30"), Some((9, 30)));
        assert_eq!(ok("0:0_7"), None);
        assert_eq!(ok("9:0x"), None);
        assert_eq!(ok("9"), None);
        assert_eq!(ok(""), None);
        assert!(
            go::parse_time_of_day("24:00")
                .unwrap_err()
                .to_string()
                .contains("invalid hour")
        );
    }

    #[test]
    fn durations_follow_go() {
        let d = |s: &str| go::parse_duration(s).ok();
        assert_eq!(d("1h30m"), Some(5_400_000_000_000));
        assert_eq!(d("1.5h"), Some(5_400_000_000_000));
        assert_eq!(d("0"), Some(0));
        assert_eq!(d("-1h"), Some(-3_600_000_000_000));
        assert_eq!(d("2\u{b5}s"), Some(2_000));
        assert_eq!(d(".5s"), Some(500_000_000));
        assert_eq!(d("90"), None);
        assert_eq!(d("1x"), None);
        assert_eq!(d("."), None);
        assert_eq!(d(""), None);
        assert_eq!(d("9223372036854775807ns"), Some(i64::MAX));
        assert_eq!(d("9223372036854775808ns"), None);
        let f = go::format_duration;
        assert_eq!(f(5_400_000_000_000), "1h30m0s");
        assert_eq!(f(3_723_500_000_000), "1h2m3.5s");
        assert_eq!(f(0), "0s");
        assert_eq!(f(300_000_000), "300ms");
        assert_eq!(f(1_500), "1.5\u{b5}s");
        assert_eq!(f(-90_000_000_000), "-1m30s");
        assert_eq!(f(i64::MIN), "-2562047h47m16.854775808s");
        assert_eq!(go::duration_seconds(3_723_500_000_000), 3723);
    }

    #[test]
    fn numbers_bools_and_sizes_follow_go() {
        assert_eq!(go::parse_int("2147483647", 32), Some(2147483647));
        assert_eq!(go::parse_int("2147483648", 32), None);
        assert_eq!(go::parse_int("-5", 32), Some(-5));
        assert_eq!(go::parse_int("1_0", 32), None);
        assert_eq!(go::parse_int("", 64), None);
        assert_eq!(go::parse_bool("T"), Some(true));
        assert_eq!(go::parse_bool("yes"), None);
        assert_eq!(go::bytes_string(2_147_483_648), "2.1 GB");
        assert_eq!(go::bytes_string(0), "0 B");
        assert_eq!(go::bytes_string(899), "899 B");
        assert_eq!(go::bytes_string(900), "0.9 KB");
    }

    #[test]
    fn action_commands_split_like_go_csv() {
        let s = |t: &str| go::split_space_csv(t).ok();
        let v = |x: &[&str]| Some(x.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // Each checked against Go's encoding/csv with Comma = ' '.
        assert_eq!(s("/bin/echo a b"), v(&["/bin/echo", "a", "b"]));
        assert_eq!(s("a  b"), v(&["a", "", "b"]));
        assert_eq!(s("\"a b\" c"), v(&["a b", "c"]));
        assert_eq!(s("\"a\"b"), None);
        assert_eq!(s("a\"b"), None);
        assert_eq!(s("\"a\nb\" c"), v(&["a\nb", "c"]));
        assert_eq!(s("\n\na b\nc d"), v(&["a", "b"]));
        assert_eq!(s("a b\r\nc"), v(&["a", "b"]));
        assert_eq!(s(" a"), v(&["", "a"]));
        assert_eq!(s("a "), v(&["a", ""]));
        assert_eq!(s("\"a\"\"b\""), v(&["a\"b"]));
        assert_eq!(s("\"unterminated"), None);
        assert_eq!(s("\n"), None);
        assert_eq!(s("\"a\" "), v(&["a", ""]));
        assert_eq!(s("x\r y"), v(&["x\r", "y"]));
    }

    #[test]
    fn string_lists_and_counts() {
        let mut changes = Changes::default();
        let mut list = vec!["b".to_string(), "a".to_string()];
        apply_string_list(
            "x",
            &mut list,
            &["c".into(), "a".into()],
            &["b".into()],
            false,
            &mut changes,
        );
        assert_eq!(list, ["a", "c"]);
        assert_eq!(changes.0, 3);
        apply_string_list("x", &mut list, &[], &[], true, &mut changes);
        assert!(list.is_empty());
        let mut n = Some(3);
        apply_optional_int("n", &mut n, &Some("inherit".into()), 32, &mut changes).unwrap();
        assert_eq!(n, None);
        assert!(apply_optional_int("n", &mut n, &Some("x".into()), 32, &mut changes).is_err());
    }

    #[test]
    fn cron_validation() {
        for ok in [
            "0 * * * *",
            "*/15 9-17 * * mon-fri",
            "0 0 L * ?",
            "0 0 ? * 5L",
            "0 0 * * 1#2",
            "@daily",
            "0 0 0 1 1 * 2030",
            "5 4 15W * *",
            "0 12 * JAN,feb *",
        ] {
            assert!(cron::validate(ok).is_ok(), "{ok}");
        }
        // Checked against hashicorp/cronexpr v1.1.3: reversed ranges and a wildcard before junk
        // in a generic field are accepted.
        for ok in ["5-3 * * * *", "*,junk * * * *"] {
            assert!(cron::validate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "a * * * *",
            "5/60 * * * *",
            "*/2/3 * * * *",
        ] {
            assert!(cron::validate(bad).is_err(), "{bad}");
        }
    }
}
