//! Workloads (issue 16): real programs the labelled worker runs end to end in every A, F and B
//! run, to show what enforcement costs a task rather than a single system call. Each builds on
//! a fixture made here before the first daemon starts; what a workload writes stays in the
//! workspace, which the policy's `files.write` allows (its default denies).
//!
//! The tools come from Debian's packages (`cargo xtask setup` installs them), found through
//! [`PATH`] only, so every machine of the kind runs the same programs. A missing tool leaves
//! its workloads out with the reason; it never gives a number.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use super::{
    fixtures::{Paths, write_file},
    worker::Job,
};

/// The only directories the workloads' programs are looked up in.
pub const PATH: &str = "/usr/bin:/bin";

// Sizes: each workload takes 2-5 s under QEMU TCG with the daemon stopped. Emulation makes a
// program's start the dominant cost: one `cc -O0 -c` of a ten-line file takes ~1.3 s there,
// `python3 -c pass` ~1.1 s. So the compile and the byte-compile are far smaller than a real
// project, and the file-walking workloads far larger than the process-starting ones.

/// Files of the git repository, spread over REPO_DIRS directories.
const REPO_FILES: usize = 8000;
const REPO_DIRS: usize = 160;
/// Tracked files changed after the commit, so that status and diff have work.
const REPO_CHANGED: usize = 400;
/// Files of the tree `grep -r` reads, spread over TREE_DIRS directories, and their lines.
const TREE_FILES: usize = 5000;
const TREE_DIRS: usize = 100;
const TREE_LINES: usize = 250;
/// Files holding the string grep looks for.
const NEEDLES: usize = 3;
const NEEDLE: &str = "actgate-bench-needle";
/// C sources besides main.c, and the functions in each.
const C_FILES: usize = 2;
const C_FUNCTIONS: usize = 6;
/// Python modules, spread over PY_PACKAGES packages, and the functions in each.
const PY_FILES: usize = 12;
const PY_PACKAGES: usize = 3;
const PY_FUNCTIONS: usize = 25;
/// Files of the archive `tar xf` extracts, spread over TAR_DIRS directories.
const TAR_FILES: usize = 2400;
const TAR_DIRS: usize = 60;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Workload {
    GitStatus,
    GitDiff,
    GrepR,
    MakeJ2,
    Compileall,
    TarX,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::GitStatus,
        Workload::GitDiff,
        Workload::GrepR,
        Workload::MakeJ2,
        Workload::Compileall,
        Workload::TarX,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::GitStatus => "git_status",
            Workload::GitDiff => "git_diff",
            Workload::GrepR => "grep_r",
            Workload::MakeJ2 => "make_j2",
            Workload::Compileall => "compileall",
            Workload::TarX => "tar_x",
        }
    }

    /// The command and what it works on, for the report.
    pub fn what(self) -> String {
        match self {
            Workload::GitStatus => format!(
                "git status in a repository of {REPO_FILES} files in {REPO_DIRS} directories, {REPO_CHANGED} of them changed"
            ),
            Workload::GitDiff => {
                format!("git --no-pager diff of the same repository ({REPO_CHANGED} changed files)")
            }
            Workload::GrepR => format!(
                "grep -r of a string in {NEEDLES} of {TREE_FILES} files in {TREE_DIRS} directories, outside the workspace"
            ),
            Workload::MakeJ2 => format!(
                "make -j2 of {C_FILES} C files of {C_FUNCTIONS} functions, a main.c and a header, at -O0, linked into one binary"
            ),
            Workload::Compileall => format!(
                "python3 -m compileall -q -f of {PY_FILES} modules ({PY_FUNCTIONS} functions each) in {PY_PACKAGES} packages"
            ),
            Workload::TarX => format!(
                "tar xf of an archive of {TAR_FILES} small files in {TAR_DIRS} directories, into the workspace"
            ),
        }
    }

    fn tools(self) -> &'static [&'static str] {
        match self {
            Workload::GitStatus | Workload::GitDiff => &["git"],
            Workload::GrepR => &["grep"],
            Workload::MakeJ2 => &["make", "cc"],
            Workload::Compileall => &["python3"],
            Workload::TarX => &["tar"],
        }
    }

    /// Untimed steps before each timed run: they undo what the previous run left.
    pub fn prepare(self, p: &Paths) -> Vec<Job> {
        match self {
            Workload::GitStatus | Workload::GitDiff | Workload::GrepR => Vec::new(),
            Workload::MakeJ2 => vec![job(p, &p.c_project(), &["make", "-s", "clean"])],
            Workload::Compileall => vec![job(
                p,
                &p.py_tree(),
                &[
                    "find",
                    ".",
                    "-name",
                    "__pycache__",
                    "-prune",
                    "-exec",
                    "rm",
                    "-rf",
                    "{}",
                    "+",
                ],
            )],
            Workload::TarX => vec![
                job(p, &p.workspace(), &["rm", "-rf", "untar"]),
                job(p, &p.workspace(), &["mkdir", "untar"]),
            ],
        }
    }

    /// The timed run.
    pub fn job(self, p: &Paths) -> Job {
        match self {
            Workload::GitStatus => job(p, &p.repo(), &["git", "status"]),
            Workload::GitDiff => job(p, &p.repo(), &["git", "--no-pager", "diff"]),
            Workload::GrepR => job(p, &p.root, &["grep", "-r", NEEDLE, "tree"]),
            Workload::MakeJ2 => job(p, &p.c_project(), &["make", "-s", "-j2"]),
            Workload::Compileall => job(
                p,
                &p.py_tree(),
                &["python3", "-m", "compileall", "-q", "-f", "."],
            ),
            Workload::TarX => job(
                p,
                &p.workspace().join("untar"),
                &["tar", "xf", &p.archive().display().to_string()],
            ),
        }
    }
}

impl Paths {
    /// The one tree the labelled worker may write to besides the micro-benchmarks' files.
    pub fn workspace(&self) -> PathBuf {
        self.root.join("work")
    }
    fn repo(&self) -> PathBuf {
        self.workspace().join("repo")
    }
    fn c_project(&self) -> PathBuf {
        self.workspace().join("cc")
    }
    fn py_tree(&self) -> PathBuf {
        self.workspace().join("py")
    }
    /// Read only, outside the workspace.
    fn grep_tree(&self) -> PathBuf {
        self.root.join("tree")
    }
    fn archive(&self) -> PathBuf {
        self.root.join("archive.tar")
    }
}

/// Every workload's environment: nothing of the caller's, a HOME and TMPDIR inside the
/// workspace (gcc and git write there), and fixed git identities and dates so the repository
/// is the same in every run.
fn env(p: &Paths) -> Vec<(String, String)> {
    let w = p.workspace();
    [
        ("PATH", PATH.to_string()),
        ("HOME", w.join("home").display().to_string()),
        ("TMPDIR", w.join("tmp").display().to_string()),
        ("LC_ALL", "C".into()),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ("GIT_AUTHOR_NAME", "actgate bench".into()),
        ("GIT_AUTHOR_EMAIL", "bench@actgate.invalid".into()),
        ("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z".into()),
        ("GIT_COMMITTER_NAME", "actgate bench".into()),
        ("GIT_COMMITTER_EMAIL", "bench@actgate.invalid".into()),
        ("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn job(p: &Paths, dir: &Path, argv: &[&str]) -> Job {
    Job {
        dir: dir.to_path_buf(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: env(p),
    }
}

/// Where `tool` is in [`PATH`], if anywhere.
fn find(tool: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A fixture step, run here by the unlabelled orchestrator; it must succeed.
fn run(job: &Job) -> Result<()> {
    let out = job
        .command()
        .output()
        .with_context(|| format!("starting {}", job.argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} in {} ended with {}: {}",
            job.argv.join(" "),
            job.dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    write_file(path, text.as_bytes())
}

/// `lines` lines of text that differ from file to file.
fn text(file: usize, lines: usize) -> String {
    let mut s = String::new();
    for l in 0..lines {
        let _ = writeln!(
            s,
            "line {l} of file {file}: the quick brown fox {} jumps over the lazy dog",
            file * 31 + l
        );
    }
    s
}

/// `files` text files of `lines` lines below `dir`, in `dirs` directories.
fn text_tree(dir: &Path, files: usize, dirs: usize, lines: usize) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(files);
    for i in 0..files {
        let path = dir.join(format!("d{:03}/f{i:05}.txt", i % dirs));
        write(&path, &text(i, lines))?;
        paths.push(path);
    }
    Ok(paths)
}

fn c_project(dir: &Path) -> Result<()> {
    let mut header = String::from("#ifndef BENCH_H\n#define BENCH_H\n");
    for k in 0..4 {
        let _ = writeln!(
            header,
            "static inline int g{k}(int x) {{ return (x ^ {k}) * {}; }}",
            k + 3
        );
    }
    for i in 0..C_FILES {
        let _ = writeln!(header, "int m{i}(int x);");
        let mut src = String::from("#include \"bench.h\"\n\n");
        for k in 0..C_FUNCTIONS {
            let _ = writeln!(
                src,
                "static int f{k}(int x)\n{{\n    int s = 0;\n    for (int j = 0; j < x; j++)\n        s += (j * {k}) ^ (s >> 3);\n    return s + g{}(x);\n}}\n",
                k % 4
            );
        }
        let calls: Vec<String> = (0..C_FUNCTIONS).map(|k| format!("f{k}(x)")).collect();
        let _ = writeln!(
            src,
            "int m{i}(int x)\n{{\n    return {};\n}}",
            calls.join(" + ")
        );
        write(&dir.join(format!("src/m{i:02}.c")), &src)?;
    }
    header.push_str("#endif\n");
    write(&dir.join("src/bench.h"), &header)?;
    let mut main = String::from("#include \"bench.h\"\n\nint main(void)\n{\n    int s = 0;\n");
    for i in 0..C_FILES {
        let _ = writeln!(main, "    s += m{i}({i});");
    }
    main.push_str("    return s == 12345;\n}\n");
    write(&dir.join("src/main.c"), &main)?;
    let objs: Vec<String> = (0..C_FILES)
        .map(|i| format!("m{i:02}.o"))
        .chain(["main.o".to_string()])
        .collect();
    write(
        &dir.join("Makefile"),
        &format!(
            "CFLAGS = -O0\nOBJS = {}\n\nbench: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n\
             %.o: src/%.c src/bench.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\n\
             clean:\n\trm -f bench $(OBJS)\n",
            objs.join(" ")
        ),
    )
}

fn py_tree(dir: &Path) -> Result<()> {
    for i in 0..PY_FILES {
        let mut src = format!("\"\"\"Module {i} of the compileall workload.\"\"\"\n\n");
        for k in 0..PY_FUNCTIONS {
            let _ = writeln!(
                src,
                "def fn_{i}_{k}(a, b=3):\n    \"\"\"Function {k}.\"\"\"\n    total = 0\n    for x in range(a):\n        if x % {} == 0:\n            total += x * b\n        else:\n            total -= {k}\n    return {{\"v\": total, \"k\": [{k}, a, b]}}\n\n",
                k + 2
            );
        }
        let package = dir.join(format!("pkg{}", i % PY_PACKAGES));
        write(&package.join(format!("mod{i:03}.py")), &src)?;
        write(&package.join("__init__.py"), "")?;
    }
    Ok(())
}

/// Makes the fixtures of every workload whose tools are there; returns the others, each
/// with the reason it is left out.
pub fn create(p: &Paths) -> Result<BTreeMap<Workload, String>> {
    let mut left_out = BTreeMap::new();
    for w in Workload::ALL {
        if let Some(tool) = w.tools().iter().find(|t| find(t).is_none()) {
            left_out.insert(w, format!("{tool} is not in {PATH}"));
        }
    }
    let wants = |w: Workload| !left_out.contains_key(&w);
    let ws = p.workspace();
    for dir in [ws.join("home"), ws.join("tmp")] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if wants(Workload::GitStatus) || wants(Workload::GitDiff) {
        let repo = p.repo();
        let files = text_tree(&repo, REPO_FILES, REPO_DIRS, 12)?;
        run(&job(p, &repo, &["git", "init", "-q"]))?;
        run(&job(p, &repo, &["git", "add", "-A"]))?;
        run(&job(p, &repo, &["git", "commit", "-q", "-m", "fixture"]))?;
        for f in files.iter().step_by(REPO_FILES / REPO_CHANGED) {
            let mut s = fs::read_to_string(f)?;
            s.push_str("changed by the benchmark\n");
            write(f, &s)?;
        }
    }
    if wants(Workload::GrepR) {
        let files = text_tree(&p.grep_tree(), TREE_FILES, TREE_DIRS, TREE_LINES)?;
        for f in files.iter().step_by(TREE_FILES / NEEDLES).take(NEEDLES) {
            let mut s = fs::read_to_string(f)?;
            s.push_str(NEEDLE);
            s.push('\n');
            write(f, &s)?;
        }
    }
    if wants(Workload::MakeJ2) {
        c_project(&p.c_project())?;
    }
    if wants(Workload::Compileall) {
        py_tree(&p.py_tree())?;
    }
    if wants(Workload::TarX) {
        let src = p.root.join("tar-src");
        text_tree(&src, TAR_FILES, TAR_DIRS, 6)?;
        let archive = p.archive().display().to_string();
        run(&job(p, &p.root, &["tar", "cf", &archive, "tar-src"]))?;
        fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    // One untimed run of each, here: it proves the workload runs before anything is timed,
    // and the first run, which reads every program from the host's file system, is nobody's
    // sample.
    for w in Workload::ALL.into_iter().filter(|w| wants(*w)) {
        for step in w.prepare(p).iter().chain([&w.job(p)]) {
            run(step).with_context(|| format!("the warm-up run of workload {}", w.name()))?;
        }
    }
    Ok(left_out)
}
