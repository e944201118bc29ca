//! Policies the mover sets: `policy set` flags parsed exactly as the CLI parses them, and the
//! mounted policy files of `KOPIA_CONFIG_PATH` (§2.9): the global policy file and the repository
//! config file. Problems with the files only warn; the run goes on.

use clap::Parser;
use kmover_format::snapshot::manifest::SourceInfo;
use kmover_repo::Repository;
use serde_json::Value;

use super::Ctx;
use super::connect::{Session, scalar};

const MAX_POLICY_FILE_BYTES: u64 = 1 << 20;

#[derive(Parser)]
#[command(name = "policy set", no_binary_name = true)]
struct PolicySetFlags {
    #[command(flatten)]
    args: crate::cli::PolicySetArgs,
}

/// Applies `kopia policy set` flags to `target` and flushes.
pub async fn set_policy(
    repo: &Repository,
    target: &SourceInfo,
    flags: &[String],
) -> anyhow::Result<()> {
    let parsed =
        PolicySetFlags::try_parse_from(flags).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    crate::commands::policy::set_from_flags(repo, target, &parsed.args).await?;
    repo.flush().await?;
    Ok(())
}

pub async fn apply(ctx: &Ctx, session: &mut Session) {
    let log = &ctx.log;
    let Some(dir) = ctx.env.get("KOPIA_CONFIG_PATH") else {
        return;
    };
    if !ctx.paths.real(dir).is_dir() {
        return;
    }
    log.plain("=== Applying policy configuration ===");
    let (mut applied, mut errors) = (0, 0);
    if let Some(file) = ctx.env.get("KOPIA_GLOBAL_POLICY_FILE")
        && ctx.paths.real(file).is_file()
    {
        log.plain(&format!("Found global policy file: {file}"));
        match global_policy_flags(ctx, file) {
            Ok(flags) if flags.len() > 1 => {
                log.plain("Applying global policy settings...");
                match set_policy(&session.repo, &SourceInfo::default(), &flags).await {
                    Ok(()) => {
                        log.plain("Global policy applied successfully");
                        applied += 1;
                    }
                    Err(e) => {
                        log.error_stdout(&format!("Failed to apply global policy settings: {e:#}"));
                        log.plain("Continuing with existing policies");
                        errors += 1;
                    }
                }
            }
            Ok(_) => log.plain("No valid global policy settings found in file"),
            Err(message) => {
                log.error_stdout(&message);
                log.plain("Continuing with default policies");
                errors += 1;
            }
        }
    }
    if let Some(file) = ctx.env.get("KOPIA_REPOSITORY_CONFIG_FILE")
        && ctx.paths.real(file).is_file()
    {
        log.plain(&format!("Found repository configuration file: {file}"));
        match read_json(ctx, file) {
            Ok(json) => {
                // `false` is honoured too (Q-13: the reference's `// empty` dropped it).
                match json.get("enableActions") {
                    Some(Value::Bool(true)) => {
                        log.plain("Actions enabled in repository configuration")
                    }
                    Some(Value::Bool(false)) => {
                        log.plain("Actions disabled in repository configuration");
                        session.actions_enabled = false;
                    }
                    _ => {}
                }
                if let Some(speed) = json.get("uploadSpeed").and_then(scalar) {
                    log.warn(&format!(
                        "uploadSpeed {speed} is not supported by kmover yet; uploads are not throttled"
                    ));
                }
                if let Some(speed) = json.get("downloadSpeed").and_then(scalar) {
                    log.warn(&format!(
                        "downloadSpeed {speed} is not supported by kmover yet; downloads are not throttled"
                    ));
                }
                log.plain("Repository configuration applied");
                applied += 1;
            }
            Err(message) => {
                log.error_stdout(&message);
                log.plain("Continuing without repository configuration");
                errors += 1;
            }
        }
    }
    log.plain(&format!(
        "Policy configuration summary: {applied} applied, {errors} errors"
    ));
    if errors > 0 {
        log.plain("Warning: Policy configuration had issues but continuing");
    }
}

fn read_json(ctx: &Ctx, file: &str) -> Result<Value, String> {
    let real = ctx.paths.real(file);
    let size = std::fs::metadata(&real).map(|m| m.len()).unwrap_or(0);
    if size > MAX_POLICY_FILE_BYTES {
        return Err(format!("Policy file too large ({size} bytes > 1MB)"));
    }
    let text = std::fs::read(&real).map_err(|e| format!("Cannot read {file}: {e}"))?;
    serde_json::from_slice(&text).map_err(|_| format!("Invalid JSON in policy file {file}"))
}

/// The global policy file as `policy set --global` flags.
fn global_policy_flags(ctx: &Ctx, file: &str) -> Result<Vec<String>, String> {
    let json = read_json(ctx, file).map_err(|e| {
        e.replace(
            "Invalid JSON in policy file",
            "Invalid JSON in global policy file",
        )
    })?;
    let mut flags = vec!["--global".to_string()];
    let at = |a: &str, b: &str| json.get(a).and_then(|v| v.get(b)).and_then(scalar);
    for (key, flag) in [
        ("keepHourly", "keep-hourly"),
        ("keepDaily", "keep-daily"),
        ("keepWeekly", "keep-weekly"),
        ("keepMonthly", "keep-monthly"),
        ("keepYearly", "keep-annual"),
    ] {
        if let Some(v) = at("retention", key) {
            flags.push(format!("--{flag}={v}"));
        }
    }
    if let Some(v) = at("compression", "compressor") {
        flags.push(format!("--compression={v}"));
    }
    if let Some(v) = at("scheduling", "interval") {
        flags.push(format!("--snapshot-interval={v}"));
    }
    if let Some(Value::Array(rules)) = json.get("files").and_then(|f| f.get("ignore")) {
        for rule in rules.iter().filter_map(scalar).filter(|r| !r.is_empty()) {
            flags.push(format!("--add-ignore={rule}"));
        }
    }
    // kopia's flag takes a value; `false` is honoured as well.
    if let Some(Value::Bool(b)) = json.get("files").and_then(|f| f.get("ignoreCacheDirs")) {
        flags.push(format!("--ignore-cache-dirs={b}"));
    }
    Ok(flags)
}
