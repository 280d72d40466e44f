//! Compiles `kernels/*.cu` with nvcc when the `cuda` feature is on.
//!
//! Each kernel file becomes `OUT_DIR/<name>.ptx` (`-arch=compute_80`, JIT-compiled by the driver
//! on any Ampere-or-newer GPU) and `OUT_DIR/<name>.sm_90a.cubin` (loaded as is on H100/H200).
//! `OUT_DIR/cuda_kernels.rs` lists them with `include_str!`/`include_bytes!`; the CUDA backend
//! (`src/backend/cuda/mod.rs`) `include!`s it.
//!
//! Without nvcc the build still succeeds: the generated list is empty and `KERNELS_BUILT` is
//! false, so `Cuda::new` returns a clear error at run time instead of the build failing on
//! machines that only need the CPU backend. A kernel that nvcc rejects fails the build.
//! `OUT_DIR/kernel_launchers.rs` (build/launchers.rs) holds one typed launcher per kernel,
//! generated from its signature, with or without nvcc.
//! With the feature off this script does nothing but print one warning.

#[path = "build/launchers.rs"]
mod launchers;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where to look for nvcc, in order: `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`, and the
/// repo-local toolkit installed by `scripts/install_nvcc.sh`.
fn find_nvcc(repo: &Path) -> Option<PathBuf> {
    if let Some(explicit) = env::var_os("NVCC") {
        return Some(PathBuf::from(explicit));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let candidate = PathBuf::from(root).join("bin/nvcc");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let candidate = dir.join("nvcc");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let local = repo.join(".nvcc/nvidia/cu13/bin/nvcc");
    local.is_file().then_some(local)
}

/// The pip wheels put the toolkit headers in `<root>/include` and CCCL (cub, thrust, libcu++) in
/// `<root>/include/cccl`; their nvcc.profile points at a `targets/` folder they do not ship, so
/// both are passed explicitly. A system toolkit finds its own headers and ignores these.
fn include_flags(nvcc: &Path) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(root) = nvcc.parent().and_then(Path::parent) {
        let include = root.join("include");
        if include.join("cuda_runtime.h").is_file() {
            flags.push(format!("-I{}", include.display()));
        }
        let cccl = include.join("cccl");
        if cccl.is_dir() {
            flags.push("-isystem".into());
            flags.push(cccl.display().to_string());
        }
    }
    flags
}

/// `git rev-parse --short HEAD` (+ `-dirty`), for bench reports; `unknown` outside git.
fn git_commit(repo: &Path) -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        _ => "unknown".into(),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    {
        let repo = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        for f in [".git/HEAD", ".git/index"] {
            if repo.join(f).exists() {
                println!("cargo:rerun-if-changed={}", repo.join(f).display());
            }
        }
        println!("cargo:rustc-env=CADA_GIT_COMMIT={}", git_commit(&repo));
    }
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "CARGO_FEATURE_CUDA"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        println!(
            "cargo:warning=cada: built without the `cuda` feature; the GPU backend is left out"
        );
        return;
    }
    let repo =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = repo.join("kernels");
    println!("cargo:rerun-if-changed={}", kernel_dir.display());

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernel_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    let units: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cu"))
        .collect();

    // typed launchers, from the sources alone (so they exist, and are type-checked, without nvcc)
    let texts: Vec<(String, String)> = sources
        .iter()
        .map(|u| {
            let name = format!("kernels/{}", u.file_name().unwrap().to_string_lossy());
            let text = fs::read_to_string(u).unwrap_or_else(|e| panic!("cada build: {name}: {e}"));
            (name, text)
        })
        .collect();
    match launchers::generate(&texts) {
        Ok(rust) => fs::write(out.join("kernel_launchers.rs"), rust)
            .expect("cada build: cannot write kernel_launchers.rs"),
        Err(e) => panic!("cada build: {e}"),
    }
    println!(
        "cargo:rerun-if-changed={}",
        repo.join("build/launchers.rs").display()
    );

    let Some(nvcc) = find_nvcc(&repo) else {
        println!(
            "cargo:warning=cada: `cuda` feature on but nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, PATH, \
             .nvcc/ from scripts/install_nvcc.sh); the GPU backend is left out and Cuda::new will fail"
        );
        write_manifest(&out, &[], false);
        return;
    };
    println!("cargo:rerun-if-changed={}", nvcc.display());

    // One nvcc per (file, target), all started at once: the build machine's cores do the rest.
    let common = {
        let mut flags = include_flags(&nvcc);
        flags.extend(
            ["-std=c++17", "-O3", "-lineinfo", "--expt-relaxed-constexpr"]
                .iter()
                .map(|s| s.to_string()),
        );
        flags.push(format!("-I{}", kernel_dir.display()));
        flags
    };
    let mut jobs = Vec::new();
    for unit in &units {
        let stem = unit.file_stem().unwrap().to_string_lossy().to_string();
        for (arch, kind, ext) in [
            ("-arch=compute_80", "--ptx", "ptx"),
            ("-arch=sm_90a", "--cubin", "sm_90a.cubin"),
        ] {
            let target = out.join(format!("{stem}.{ext}"));
            // The script also reruns when the git commit changes (for CADA_GIT_COMMIT): skip
            // nvcc when the output is newer than this unit, every header and nvcc itself.
            if is_fresh(&target, unit, &sources, &nvcc) {
                continue;
            }
            let child = Command::new(&nvcc)
                .args(&common)
                .arg(arch)
                .arg(kind)
                .arg(unit.as_path())
                .arg("-o")
                .arg(&target)
                .spawn()
                .unwrap_or_else(|e| panic!("cada build: cannot run {}: {e}", nvcc.display()));
            jobs.push((unit.display().to_string(), arch, child));
        }
    }
    let mut failures = Vec::new();
    for (unit, arch, mut child) in jobs {
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => failures.push(format!("{unit} ({arch}): nvcc exited with {status}")),
            Err(e) => failures.push(format!("{unit} ({arch}): {e}")),
        }
    }
    if !failures.is_empty() {
        panic!(
            "cada build: kernels failed to compile:\n{}",
            failures.join("\n")
        );
    }
    let stems: Vec<String> = units
        .iter()
        .map(|u| u.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    write_manifest(&out, &stems, true);
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// True when `target` exists and is newer than `unit`, every `.cuh` and nvcc.
fn is_fresh(target: &Path, unit: &Path, sources: &[PathBuf], nvcc: &Path) -> bool {
    let Some(t) = modified(target) else {
        return false;
    };
    let headers = sources
        .iter()
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cuh"));
    std::iter::once(unit)
        .chain(headers.map(PathBuf::as_path))
        .chain(std::iter::once(nvcc))
        .all(|p| modified(p).is_some_and(|m| m < t))
}

/// Writes `cuda_kernels.rs`: one `KernelModule` per compiled `.cu` file.
fn write_manifest(out: &Path, stems: &[String], built: bool) {
    let mut text = format!("pub const KERNELS_BUILT: bool = {built};\n");
    text.push_str("pub static KERNEL_MODULES: &[KernelModule] = &[\n");
    for stem in stems {
        let ptx = out.join(format!("{stem}.ptx"));
        let cubin = out.join(format!("{stem}.sm_90a.cubin"));
        text.push_str(&format!(
            "    KernelModule {{ name: {stem:?}, ptx: include_str!({:?}), cubin_sm90a: include_bytes!({:?}) }},\n",
            ptx.display().to_string(),
            cubin.display().to_string()
        ));
    }
    text.push_str("];\n");
    fs::write(out.join("cuda_kernels.rs"), text).expect("cada build: cannot write cuda_kernels.rs");
}
