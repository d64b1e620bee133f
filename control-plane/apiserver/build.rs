//! Build facts for sluice-server's /version: the git commit and tree state
//! of the checkout (`unknown` without git), the build date, the target
//! platform in Go's spelling (`linux/amd64`) and the rustc version. Runs
//! again when HEAD, the branch it names or the index moves, so the commit
//! is always the checkout's; the date and tree state are those of that
//! run (an unstaged edit alone does not rerun it). SOURCE_DATE_EPOCH
//! (reproducible builds) overrides the date.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Days since 1970-01-01 as a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Go's names for the architectures Rust calls otherwise.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// The upstream `generated.proto` files under `proto/` (see its README)
/// as one descriptor set, for the protobuf request bodies
/// (src/http/protobuf.rs). protox is pure Rust: no protoc needed.
fn protos(dir: &Path) {
    let root = dir.join("proto");
    // A directory: cargo looks at everything under it.
    println!("cargo:rerun-if-changed={}", root.display());
    let files = [
        "k8s.io/api/core/v1/generated.proto",
        "k8s.io/api/apps/v1/generated.proto",
        "k8s.io/api/batch/v1/generated.proto",
        "k8s.io/api/autoscaling/v1/generated.proto",
        "k8s.io/api/coordination/v1/generated.proto",
        "k8s.io/api/discovery/v1/generated.proto",
        "k8s.io/api/events/v1/generated.proto",
        "k8s.io/api/policy/v1/generated.proto",
    ];
    let set = protox::Compiler::new([&root])
        .and_then(|mut c| {
            c.include_imports(true);
            c.open_files(files)?;
            Ok(c.encode_file_descriptor_set())
        })
        .unwrap_or_else(|e| panic!("compiling {}: {e}", root.display()));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    std::fs::write(out.join("kubernetes.fds"), set)
        .unwrap_or_else(|e| panic!("writing the descriptor set: {e}"));
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    println!("cargo:rerun-if-changed=build.rs");
    protos(&dir);
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");

    let commit = git(&dir, &["rev-parse", "HEAD"]);
    if commit.is_some() {
        // HEAD moves on checkout, the branch file on commit; the index
        // changes with the tree state.
        if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]) {
            let git_dir = PathBuf::from(git_dir);
            println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
            println!("cargo:rerun-if-changed={}", git_dir.join("index").display());
            let common = git(&dir, &["rev-parse", "--git-common-dir"])
                .map(|c| dir.join(c))
                .unwrap_or(git_dir);
            if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
                let ref_file = common.join(branch);
                if ref_file.exists() {
                    println!("cargo:rerun-if-changed={}", ref_file.display());
                }
            }
            let packed = common.join("packed-refs");
            if packed.exists() {
                println!("cargo:rerun-if-changed={}", packed.display());
            }
        }
    }
    let tree_state = match git(&dir, &["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if s.is_empty() => "clean",
        Some(_) => "dirty",
        None => "unknown",
    };
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())
        })
        .map(rfc3339)
        .unwrap_or_else(|| "unknown".into());
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_else(|_| "unknown".into());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "unknown".into());
    let rustc = std::env::var("RUSTC")
        .ok()
        .and_then(|r| Command::new(r).arg("--version").output().ok())
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());

    println!(
        "cargo:rustc-env=SLUICE_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rustc-env=SLUICE_GIT_TREE_STATE={tree_state}");
    println!("cargo:rustc-env=SLUICE_BUILD_DATE={date}");
    println!("cargo:rustc-env=SLUICE_PLATFORM={os}/{}", go_arch(&arch));
    println!("cargo:rustc-env=SLUICE_RUSTC={rustc}");
}
