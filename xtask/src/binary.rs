//! Builds the `idem` binary the scenarios run (debug, or release with `--release`) with the cargo
//! that runs this task, and finds it in the target directory.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_owned()
}

/// `cargo build -p idem [--release]`; the binary's path.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    println!(
        "chaos: building idem ({})",
        if release { "release" } else { "debug" }
    );
    build_quietly(release)
}

/// As [`build`], without the line on stdout (the bench keeps stdout for its result lines).
pub fn build_quietly(release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "-p", "idem", "--bin", "idem"]);
    // `cargo run` gave this process the variables of *its* package (CARGO_PKG_*, CARGO_MANIFEST_*,
    // a longer LD_LIBRARY_PATH); build scripts that watch the environment would rebuild half the
    // dependency tree if the inner build saw them, and again in the next plain `cargo build`.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let keep = matches!(k.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR");
        if (k.starts_with("CARGO_") && !keep) || k == "LD_LIBRARY_PATH" || k == "OUT_DIR" {
            cmd.env_remove(&k);
        }
    }
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p idem failed: {status}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target
        .join(if release { "release" } else { "debug" })
        .join("idem");
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}
