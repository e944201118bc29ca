//! Helper of `scripts/compare.sh` (the kopia-versus-kmover comparison): deterministic dataset
//! generation, the 1%-change mutation, restored-tree verification, an S3 latency proxy, bucket
//! creation on MinIO and a peak-RSS measuring wrapper. It is a bench target only so that it builds
//! with the workspace's dependencies; run without a subcommand (as `cargo bench` and
//! `cargo test --benches` do) it does nothing.
//!
//! Subcommands (sizes in bytes):
//!   gen-mixed DIR SCALE              the mixed set of scenario (a), scaled
//!   gen-big FILE BYTES [SEED]        one pseudo-random file (another SEED, other bytes)
//!   gen-many DIR FILES DIRS SIZE     FILES files of SIZE bytes spread over DIRS leaf directories
//!   mutate DIR PERCENT GENERATION    rewrite a 4 KiB region in PERCENT% of the files
//!   same-tree EXPECTED ACTUAL        exit 1 unless the trees match (types, modes, contents, mtimes)
//!   tree-bytes DIR                   total bytes of regular files under DIR
//!   proxy LISTEN UPSTREAM RTT_MS     TCP proxy adding RTT_MS to every round trip
//!   create-bucket ENDPOINT BUCKET    on plain-HTTP S3; keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
//!   free-port                        prints a free TCP port on 127.0.0.1
//!   measure OUT -- CMD...            runs CMD, writes "SECONDS PEAK_RSS_KIB" to OUT, exits as CMD

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Every dataset derives from this seed, so runs on different machines see the same bytes.
const BASE_SEED: u64 = 0x6b6d_6f76_6572_2d62;
/// Full-scale sizes of the mixed set: 1 GiB random, 512 MiB compressible, 20,000 small files.
const MIXED_RANDOM_BYTES: f64 = 1024.0 * 1024.0 * 1024.0;
const MIXED_COMPRESSIBLE_BYTES: f64 = 512.0 * 1024.0 * 1024.0;
const MIXED_SMALL_FILES: f64 = 20_000.0;
/// Small files are 1..=SMALL_MAX bytes (about 26 KiB on average: 512 MiB for 20,000 files).
const SMALL_MAX: u64 = 52 * 1024;
const RANDOM_FILES: u64 = 16;
const COMPRESSIBLE_FILES: u64 = 32;
const SMALL_FILES_PER_DIR: u64 = 100;
const MUTATION_LEN: u64 = 4096;
const WRITE_BUF: usize = 1 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`, `cargo test --benches` nothing: there is nothing to measure.
    if args.iter().all(|a| a.starts_with('-')) {
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("compare_helper {}: {e}", args[0]);
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["gen-mixed", dir, scale] => gen_mixed(Path::new(dir), parse(scale, "SCALE")?),
        ["gen-big", file, bytes] => gen_big(Path::new(file), parse(bytes, "BYTES")?, 0),
        ["gen-big", file, bytes, seed] => gen_big(
            Path::new(file),
            parse(bytes, "BYTES")?,
            parse(seed, "SEED")?,
        ),
        ["gen-many", dir, files, dirs, size] => gen_many(
            Path::new(dir),
            parse(files, "FILES")?,
            parse(dirs, "DIRS")?,
            parse(size, "SIZE")?,
        ),
        ["mutate", dir, percent, generation] => mutate(
            Path::new(dir),
            parse(percent, "PERCENT")?,
            parse(generation, "GENERATION")?,
        ),
        ["same-tree", expected, actual] => {
            return same_tree(Path::new(expected), Path::new(actual));
        }
        ["tree-bytes", dir] => {
            let total: u64 = list_files(Path::new(dir))?.iter().map(|(_, len)| len).sum();
            println!("{total}");
            Ok(())
        }
        ["proxy", listen, upstream, rtt_ms] => proxy(listen, upstream, parse(rtt_ms, "RTT_MS")?),
        ["create-bucket", endpoint, bucket] => create_bucket(endpoint, bucket),
        ["free-port"] => {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("cannot bind a free port: {e}"))?
                .port();
            println!("{port}");
            Ok(())
        }
        ["measure", out, "--", cmd @ ..] if !cmd.is_empty() => return measure(Path::new(out), cmd),
        _ => Err(format!(
            "unknown subcommand or wrong arguments: {args:?} (see benches/compare_helper.rs)"
        )),
    }
    .map(|()| ExitCode::SUCCESS)
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{what} must be a number, got {s:?}"))
}

/// splitmix64: fast, and the same stream everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn for_name(name: &str, salt: u64) -> Self {
        // FNV-1a of the name: a file's bytes depend on its path only, not on generation order.
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Rng(h ^ BASE_SEED)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Random,
    Text,
    Binary,
}

/// Writes `len` bytes of `kind` content, seeded by the file's name.
fn write_file(path: &Path, rel: &str, kind: Kind, len: u64) -> Result<(), String> {
    let err = |e: io::Error| format!("cannot write {}: {e}", path.display());
    let mut rng = Rng::for_name(rel, 0);
    let mut out = BufWriter::with_capacity(WRITE_BUF, File::create(path).map_err(err)?);
    let mut buf = vec![0u8; WRITE_BUF];
    let mut left = len;
    let mut text = TextGen::new(rng.next());
    let mut binary = BinaryGen::new(rng.next());
    while left > 0 {
        let n = left.min(WRITE_BUF as u64) as usize;
        let piece = &mut buf[..n];
        match kind {
            Kind::Random => rng.fill(piece),
            Kind::Text => text.fill(piece),
            Kind::Binary => binary.fill(piece),
        }
        out.write_all(piece).map_err(err)?;
        left -= n as u64;
    }
    out.flush().map_err(err)
}

/// English-like lines from a fixed pseudo-word vocabulary: zstd-fastest shrinks it about 3x.
struct TextGen {
    rng: Rng,
    words: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl TextGen {
    fn new(seed: u64) -> Self {
        let mut vocab_rng = Rng::new(BASE_SEED);
        const SYLLABLES: [&str; 24] = [
            "ka", "to", "ri", "mo", "ne", "sa", "lu", "pe", "di", "go", "an", "er", "in", "on",
            "us", "ex", "th", "st", "ch", "qu", "ly", "ve", "or", "al",
        ];
        let words = (0..2000)
            .map(|_| {
                let n = 1 + vocab_rng.below(4);
                (0..n)
                    .flat_map(|_| SYLLABLES[vocab_rng.below(24) as usize].bytes())
                    .collect()
            })
            .collect();
        TextGen {
            rng: Rng::new(seed),
            words,
            pending: Vec::new(),
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut pos = 0;
        while pos < buf.len() {
            if self.pending.is_empty() {
                self.line();
            }
            let n = self.pending.len().min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            pos += n;
        }
    }

    fn line(&mut self) {
        let words = 4 + self.rng.below(12);
        for i in 0..words {
            if i > 0 {
                self.pending.push(b' ');
            }
            // Zipf-like skew: common words are much more common.
            let r = self.rng.below(self.words.len() as u64);
            let idx = (r * r / self.words.len() as u64) as usize;
            self.pending.extend_from_slice(&self.words[idx]);
            if self.rng.below(16) == 0 {
                self.pending
                    .extend_from_slice(format!(" {}", self.rng.below(100_000)).as_bytes());
            }
        }
        self.pending.extend_from_slice(b".\n");
    }
}

/// Executable-like bytes: 64-byte blocks that repeat recent blocks, zero padding, 4-byte words
/// from a small skewed alphabet, and some noise; zstd-fastest shrinks it about 2x.
struct BinaryGen {
    rng: Rng,
    alphabet: Vec<[u8; 4]>,
    recent: Vec<[u8; 64]>,
}

impl BinaryGen {
    const RECENT: usize = 256;

    fn new(seed: u64) -> Self {
        let mut a = Rng::new(BASE_SEED ^ 0xb1);
        BinaryGen {
            rng: Rng::new(seed),
            // Small values with high zero bytes, like offsets and opcodes.
            alphabet: (0..64)
                .map(|_| ((a.next() as u32) & 0x00ff_ffff).to_le_bytes())
                .collect(),
            recent: Vec::with_capacity(Self::RECENT),
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut pos = 0;
        while pos < buf.len() {
            let mut block = [0u8; 64];
            match self.rng.below(10) {
                0 => {} // zero padding
                1 => self.rng.fill(&mut block),
                2..=4 if !self.recent.is_empty() => {
                    block = self.recent[self.rng.below(self.recent.len() as u64) as usize];
                }
                _ => {
                    for w in block.chunks_exact_mut(4) {
                        let r = self.rng.below(self.alphabet.len() as u64);
                        let idx = (r * r / self.alphabet.len() as u64) as usize;
                        w.copy_from_slice(&self.alphabet[idx]);
                    }
                }
            }
            if self.recent.len() < Self::RECENT {
                self.recent.push(block);
            } else {
                let slot = self.rng.below(Self::RECENT as u64) as usize;
                self.recent[slot] = block;
            }
            let n = block.len().min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&block[..n]);
            pos += n;
        }
    }
}

fn create_dir(path: &Path) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn gen_mixed(dir: &Path, scale: f64) -> Result<(), String> {
    if !(scale > 0.0 && scale <= 100.0) {
        return Err(format!("SCALE must be in (0, 100], got {scale}"));
    }
    let random_each = (MIXED_RANDOM_BYTES * scale / RANDOM_FILES as f64) as u64;
    let compressible_each = (MIXED_COMPRESSIBLE_BYTES * scale / COMPRESSIBLE_FILES as f64) as u64;
    let small_files = ((MIXED_SMALL_FILES * scale).round() as u64).max(1);
    for sub in ["random", "text", "binary", "small"] {
        create_dir(&dir.join(sub))?;
    }
    for i in 0..RANDOM_FILES {
        let rel = format!("random/r{i:02}.dat");
        write_file(&dir.join(&rel), &rel, Kind::Random, random_each)?;
    }
    for i in 0..COMPRESSIBLE_FILES / 2 {
        let rel = format!("text/t{i:02}.txt");
        write_file(&dir.join(&rel), &rel, Kind::Text, compressible_each)?;
        let rel = format!("binary/b{i:02}.bin");
        write_file(&dir.join(&rel), &rel, Kind::Binary, compressible_each)?;
    }
    for i in 0..small_files {
        let sub = format!("small/d{:03}", i / SMALL_FILES_PER_DIR);
        if i % SMALL_FILES_PER_DIR == 0 {
            create_dir(&dir.join(&sub))?;
        }
        let (kind, ext) = match i % 4 {
            0 | 1 => (Kind::Text, "txt"),
            2 => (Kind::Binary, "bin"),
            _ => (Kind::Random, "dat"),
        };
        let rel = format!("{sub}/f{i:05}.{ext}");
        let len = 1 + Rng::for_name(&rel, 1).below(SMALL_MAX);
        write_file(&dir.join(&rel), &rel, kind, len)?;
    }
    Ok(())
}

fn gen_big(file: &Path, bytes: u64, seed: u64) -> Result<(), String> {
    if let Some(parent) = file.parent() {
        create_dir(parent)?;
    }
    write_file(file, &format!("big-{seed}.dat"), Kind::Random, bytes)
}

fn gen_many(dir: &Path, files: u64, dirs: u64, size: u64) -> Result<(), String> {
    if dirs == 0 {
        return Err("DIRS must be at least 1".into());
    }
    // Two levels (at most 100 top directories) so no single listing is enormous.
    let top = dirs.clamp(1, 100);
    let per_top = dirs.div_ceil(top);
    let per_dir = files.div_ceil(dirs);
    let mut made = 0u64;
    let mut content = vec![0u8; size as usize];
    for d in 0..dirs {
        let sub = dir.join(format!("t{:03}/d{:04}", d / per_top, d % per_top));
        create_dir(&sub)?;
        for f in 0..per_dir.min(files - made) {
            let mut rng = Rng::new(BASE_SEED ^ made);
            rng.fill(&mut content);
            let path = sub.join(format!("f{f:03}"));
            fs::write(&path, &content)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            made += 1;
        }
    }
    Ok(())
}

/// Regular files under `dir` with their lengths, in path order, relative paths as keys.
fn list_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let entries =
            fs::read_dir(&abs).map_err(|e| format!("cannot list {}: {e}", abs.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", abs.display()))?;
            let meta = entry
                .metadata()
                .map_err(|e| format!("cannot stat {}: {e}", entry.path().display()))?;
            let child = rel.join(entry.file_name());
            if meta.is_dir() {
                stack.push(child);
            } else if meta.is_file() {
                out.push((child, meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Rewrites a 4 KiB region (the whole file if shorter) of every (100/PERCENT)-th file, the set
/// chosen by GENERATION, so each generation changes other files and other bytes.
fn mutate(dir: &Path, percent: f64, generation: u64) -> Result<(), String> {
    if !(percent > 0.0 && percent <= 100.0) {
        return Err(format!("PERCENT must be in (0, 100], got {percent}"));
    }
    let files = list_files(dir)?;
    let stride = (100.0 / percent).round().max(1.0) as u64;
    let offset = generation.wrapping_mul(37) % stride;
    let mut changed = 0;
    for (i, (rel, len)) in files.iter().enumerate() {
        if i as u64 % stride != offset || *len == 0 {
            continue;
        }
        let path = dir.join(rel);
        let err = |e: io::Error| format!("cannot modify {}: {e}", path.display());
        let mut rng = Rng::for_name(&rel.to_string_lossy(), 0x1000 + generation);
        let n = MUTATION_LEN.min(*len);
        let at = rng.below(len - n + 1);
        let mut bytes = vec![0u8; n as usize];
        rng.fill(&mut bytes);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(err)?;
        f.seek(SeekFrom::Start(at)).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        changed += 1;
    }
    println!("{changed}");
    Ok(())
}

#[derive(Debug, PartialEq)]
enum Node {
    Dir,
    File {
        len: u64,
        mode: u32,
        mtime: (i64, i64),
    },
    Symlink(PathBuf),
    Other,
}

fn node(path: &Path) -> Result<Node, String> {
    let meta =
        fs::symlink_metadata(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let ft = meta.file_type();
    Ok(if ft.is_dir() {
        Node::Dir
    } else if ft.is_file() {
        Node::File {
            len: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    } else if ft.is_symlink() {
        Node::Symlink(
            fs::read_link(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        )
    } else {
        Node::Other
    })
}

fn same_contents(a: &Path, b: &Path) -> Result<bool, String> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; WRITE_BUF], vec![0u8; WRITE_BUF]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| format!("{}: {e}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| format!("{}: {e}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn children(dir: &Path) -> Result<BTreeMap<std::ffi::OsString, ()>, String> {
    fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .map(|e| {
            e.map(|e| (e.file_name(), ()))
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))
        })
        .collect()
}

/// Compares two trees: entry names and types, file contents, permission bits, file mtimes and
/// symlink targets. Prints the first differences.
fn same_tree(expected: &Path, actual: &Path) -> Result<ExitCode, String> {
    const SHOWN: usize = 10;
    let mut differences = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut files = 0u64;
    while let Some(rel) = stack.pop() {
        let (e, a) = (expected.join(&rel), actual.join(&rel));
        let (ne, na) = (node(&e)?, node(&a)?);
        match (&ne, &na) {
            (Node::Dir, Node::Dir) => {
                let (ce, ca) = (children(&e)?, children(&a)?);
                for name in ce.keys().filter(|n| !ca.contains_key(*n)) {
                    differences.push(format!("missing: {}", rel.join(name).display()));
                }
                for name in ca.keys().filter(|n| !ce.contains_key(*n)) {
                    differences.push(format!("unexpected: {}", rel.join(name).display()));
                }
                stack.extend(
                    ce.keys()
                        .filter(|n| ca.contains_key(*n))
                        .map(|n| rel.join(n)),
                );
            }
            (Node::File { .. }, Node::File { .. }) => {
                files += 1;
                if ne != na {
                    differences.push(format!(
                        "metadata differs: {}: {ne:?} vs {na:?}",
                        rel.display()
                    ));
                } else if !same_contents(&e, &a)? {
                    differences.push(format!("contents differ: {}", rel.display()));
                }
            }
            _ if ne == na => {}
            _ => differences.push(format!("{}: {ne:?} vs {na:?}", rel.display())),
        }
        if differences.len() >= SHOWN {
            break;
        }
    }
    if differences.is_empty() {
        println!("identical ({files} files)");
        return Ok(ExitCode::SUCCESS);
    }
    for d in &differences {
        eprintln!("{d}");
    }
    eprintln!(
        "{} and {} differ (first {} differences shown)",
        expected.display(),
        actual.display(),
        differences.len()
    );
    Ok(ExitCode::from(1))
}

/// Forwards TCP connections to `upstream`, delaying every chunk by half of `rtt_ms` in each
/// direction: a pure delay line, so throughput is kept and each request/response round trip
/// gains `rtt_ms`.
fn proxy(listen: &str, upstream: &str, rtt_ms: u64) -> Result<(), String> {
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let one_way = Duration::from_micros(rtt_ms * 500);
    println!("proxy listening on {listen}");
    io::stdout().flush().ok();
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let upstream = upstream.to_string();
        thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&upstream) else {
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => return,
            };
            let up = thread::spawn(move || delay_line(client, server, one_way));
            delay_line(s2, c2, one_way);
            let _ = up.join();
        });
    }
    Ok(())
}

/// Copies `from` to `to`, each chunk leaving `delay` after it arrived.
fn delay_line(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (arrived, chunk) in rx {
            let due = arrived + delay;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if chunk.is_empty() || to.write_all(&chunk).is_err() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        if tx.send((Instant::now(), buf[..n].to_vec())).is_err() || n == 0 {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}

fn create_bucket(endpoint: &str, bucket: &str) -> Result<(), String> {
    let mut config = kmover_blob::s3::S3Config::new(bucket, endpoint).with_env_credentials();
    config.disable_tls = true;
    let store = kmover_blob::s3::S3Store::new(config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    // A freshly started MinIO refuses connections, then answers 503 for a moment: wait up to a
    // minute for it to listen, then retry transient errors until the same deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(endpoint).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {endpoint}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
    runtime.block_on(async {
        loop {
            match store.create_bucket().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("cannot create bucket {bucket}: {e}")),
            }
        }
    })
}

/// Peak RSS by polling `/proc/PID/status` (VmHWM only grows, so the last reading before exit is
/// the peak to within one poll); for machines without GNU time.
fn measure(out: &Path, cmd: &[&str]) -> Result<ExitCode, String> {
    let start = Instant::now();
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cmd[0]))?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(status) = fs::read_to_string(&status_path) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot wait for {}: {e}", cmd[0])),
        }
    };
    let secs = start.elapsed().as_secs_f64();
    fs::write(out, format!("{secs:.3} {peak_kib}\n"))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
        None => ExitCode::from(1),
    })
}
