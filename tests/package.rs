//! The Debian package (`make deb`, scripts/make-deb.sh) built from this
//! build's binary: its files, control fields, conffiles, that it depends on
//! no lab package, that lintian finds no error in it, and that the example
//! /etc/lbctl/lbctl.toml it ships is a file lbctl reads. Nothing is
//! installed: the package is only read with dpkg-deb and lintian.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A scratch directory removed when the test ends, failed or not.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lbctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, panicking with its stderr unless it succeeds; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (make test-deps installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Builds the package from the binary under test into `dir`; its path.
fn build_deb(dir: &Path) -> PathBuf {
    let out = run(Command::new(format!("{ROOT}/scripts/make-deb.sh"))
        .arg(dir)
        .env("LBCTL_BIN", env!("CARGO_BIN_EXE_lbctl")));
    PathBuf::from(out.trim())
}

fn shipped_example() -> String {
    std::fs::read_to_string(format!("{ROOT}/contrib/lbctl.toml")).expect("contrib/lbctl.toml")
}

/// The example with its commented-out settings (`# key = ...`, `# [table]`)
/// uncommented: what an operator gets by uncommenting them all.
fn uncommented(example: &str) -> String {
    example
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The package names a Makefile list (`NAME := a b \` + continuation lines).
fn makefile_list(makefile: &str, name: &str) -> BTreeSet<String> {
    let start = makefile
        .find(&format!("\n{name} :="))
        .unwrap_or_else(|| panic!("{name} in the Makefile"));
    let mut words = BTreeSet::new();
    for line in makefile[start + name.len() + 4..].lines() {
        let line = line.trim();
        words.extend(
            line.trim_end_matches('\\')
                .split_whitespace()
                .filter(|w| !w.starts_with('$'))
                .map(str::to_string),
        );
        if !line.ends_with('\\') {
            break;
        }
    }
    words
}

#[test]
fn shipped_example_is_a_file_lbctl_reads() {
    let example = shipped_example();
    let as_shipped = lbctl::config_file::parse(&example)
        .unwrap_or_else(|e| panic!("contrib/lbctl.toml as shipped: {e}"));
    assert!(
        as_shipped.vips.is_empty() && as_shipped.interfaces.is_empty(),
        "as shipped the example configures nothing"
    );
    let full = uncommented(&example);
    let desired = lbctl::config_file::parse(&full)
        .unwrap_or_else(|e| panic!("contrib/lbctl.toml, every setting uncommented: {e}\n{full}"));
    assert_eq!(
        desired.vips.len(),
        1,
        "uncommented, the example has its VIP"
    );
    assert!(desired.xdp_mode.is_some() && desired.hash_seed.is_some());
    // Its comments name every mode and every timeout the file takes.
    lbctl_lab::configs::assert_names_every_mode_and_timeout("the example", &example, |t| {
        full.contains(&format!("\n{t} = "))
    });
}

#[test]
fn deb_has_the_service_and_no_lab() {
    let scratch = Scratch::new("package");
    let deb = build_deb(&scratch.0);
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("lbctl_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim())
    );

    // Files: exactly these outside the man pages, and a page per command.
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap()
                .trim_start_matches('.')
                .to_string()
        })
        .collect();
    let (pages, rest): (BTreeSet<String>, BTreeSet<String>) = files
        .into_iter()
        .partition(|f| f.starts_with("/usr/share/man/man8/"));
    let expected: BTreeSet<String> = [
        "/etc/lbctl/lbctl.toml",
        "/usr/lib/systemd/system/lbctl.service",
        "/usr/sbin/lbctl",
        "/usr/share/bash-completion/completions/lbctl",
        "/usr/share/doc/lbctl/changelog.gz",
        "/usr/share/doc/lbctl/copyright",
        "/usr/share/fish/vendor_completions.d/lbctl.fish",
        "/usr/share/zsh/vendor-completions/_lbctl",
    ]
    .map(String::from)
    .into();
    assert_eq!(rest, expected, "files of the package\n{listing}");
    for page in [
        "lbctl.8.gz",
        "lbctl-run.8.gz",
        "lbctl-apply.8.gz",
        "lbctl-vip-add.8.gz",
    ] {
        assert!(
            pages.contains(&format!("/usr/share/man/man8/{page}")),
            "no {page}\n{listing}"
        );
    }

    // Control fields.
    let field = |name: &str| {
        run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "lbctl");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(
        field("Maintainer").contains('@'),
        "a Maintainer with an address"
    );
    assert!(!field("Description").is_empty());
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/lbctl/lbctl.toml");

    // Depends: the libraries the binary links, and nothing of the build or the lab.
    let depends = field("Depends");
    let names: BTreeSet<String> = depends
        .split(',')
        .flat_map(|alt| alt.split('|'))
        .map(|d| d.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    for lib in ["libc6", "libelf1", "zlib1g"] {
        assert!(names.contains(lib), "Depends {depends:?} lacks {lib}");
    }
    let makefile = std::fs::read_to_string(format!("{ROOT}/Makefile")).expect("Makefile");
    let kernel = std::fs::read_to_string(format!("{ROOT}/scripts/kernels/DEPS")).expect("DEPS");
    let mut not_runtime = makefile_list(&makefile, "TEST_PACKAGES");
    not_runtime.extend(makefile_list(&makefile, "BUILD_PACKAGES"));
    not_runtime.extend(makefile_list(&makefile, "DEB_PACKAGES"));
    not_runtime.extend(kernel.split_whitespace().map(str::to_string));
    assert!(
        not_runtime.contains("haproxy") && not_runtime.contains("clang"),
        "lists read"
    );
    for name in &names {
        assert!(
            !not_runtime.contains(name),
            "Depends {depends:?} has {name}, a build or lab package"
        );
    }
    let recommends = field("Recommends");
    for name in recommends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
    {
        assert!(
            name == "kmod",
            "Recommends {recommends:?}: only kmod (lbctl runs modprobe)"
        );
    }

    // What it ships: the example as in contrib/, the unit running the packaged binary.
    let root = scratch.0.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let toml = std::fs::read_to_string(root.join("etc/lbctl/lbctl.toml")).unwrap();
    assert_eq!(toml, shipped_example());
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/lbctl.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/sbin/lbctl run -f /etc/lbctl/lbctl.toml"),
        "the unit starts the packaged binary on the shipped file\n{unit}"
    );
    assert!(
        !unit.contains("/usr/local"),
        "no /usr/local path left in the unit\n{unit}"
    );
    assert!(
        unit.contains("ExecStartPre=/usr/sbin/lbctl check -f /etc/lbctl/lbctl.toml"),
        "the unit checks the file before it starts\n{unit}"
    );
    let checked = run(Command::new(root.join("usr/sbin/lbctl"))
        .args(["check", "-f"])
        .arg(root.join("etc/lbctl/lbctl.toml")));
    assert!(
        checked.contains(": ok: "),
        "the shipped example passes lbctl check: {checked}"
    );
    let version = run(Command::new(root.join("usr/sbin/lbctl")).arg("--version"));
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "the packaged binary runs: {version}"
    );
}

#[test]
fn deb_has_no_lintian_error() {
    let scratch = Scratch::new("lintian");
    let deb = build_deb(&scratch.0);
    let out = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(&deb)
        .output()
        .expect("running lintian (make test-deps installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(
        errors.is_empty() && out.status.success(),
        "lintian: {}\n{report}",
        out.status
    );
    // Warnings are printed for the reader; they do not fail the test.
    print!("{report}");
}
