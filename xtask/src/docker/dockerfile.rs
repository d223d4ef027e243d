//! The other way to build the image: the environment's rendered multi-stage
//! Dockerfile (`cargo xtask render --env dev` writes it), built through the
//! API from a build context made in memory out of the workspace.
//!
//! The context is every file of the workspace but those the ignore files
//! exclude: the workspace's `.dockerignore` and the rendered
//! `Dockerfile.dockerignore` (`docker build` reads one or the other; we
//! honour both), with `.dockerignore` syntax (`*`, `?`, `**`, `[...]`, `!`
//! exceptions, the last matching line wins, a directory excludes what is
//! under it). Whatever the ignore files say, `.local/` directories and
//! `.env` files never leave the machine: they hold secrets. Entries are in
//! path order with a fixed owner and mtime, so the same tree gives the same
//! bytes (and the engine's build cache its layers).
//!
//! The engine's API reaches its classic builder, which runs multi-stage
//! builds but not BuildKit's `RUN --mount` (driving BuildKit needs a gRPC
//! session beside the API call), so the Dockerfile template uses no
//! BuildKit-only instruction; see docs/seed-differences.md. Base images the
//! engine lacks are pulled first, one by one, so that one that cannot be
//! pulled is named with the registry's error before the context is sent.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use bollard::query_parameters::BuildImageOptionsBuilder;

use super::Engine;
use crate::environment::Environment;
use crate::progress::Progress;
use crate::render::{self, context::Upstreams};

/// Where the rendered Dockerfile goes in the context (it is rendered in
/// memory, not read from the workspace).
pub const DOCKERFILE: &str = ".freedumb-build/Dockerfile";
/// The workspace's ignore file.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// One line of an ignore file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// `!`: re-includes what an earlier line excluded.
    exception: bool,
    /// Cleaned: no leading `/` or `./`, no trailing `/`.
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: anything but `/`.
    Star,
    /// `?`: one character but `/`.
    One,
    /// `**/`, or `**` before more: any number of whole directories.
    Dirs,
    /// `**` at the end: everything.
    All,
    /// `[...]`, `[!...]`: (negated, ranges).
    Class(bool, Vec<(char, char)>),
}

/// The exclusion rules of one or more ignore files, in order.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    /// Adds the lines of an ignore file (comments and blank lines skipped).
    pub fn add(&mut self, text: &str) {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (exception, rest) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let text = clean(rest);
            if text.is_empty() {
                continue;
            }
            let tokens = tokenize(&text);
            self.patterns.push(Pattern { exception, text, tokens });
        }
    }

    /// Whether `path` (relative, `/`-separated) is excluded: the last line
    /// that matches it, or one of its parent directories, decides.
    pub fn excludes(&self, path: &str) -> bool {
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            let hit = matches(&pattern.tokens, &path.chars().collect::<Vec<_>>())
                || parents.iter().any(|parent| matches(&pattern.tokens, &parent.chars().collect::<Vec<_>>()));
            if hit {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether an exception could re-include something under `dir`, so an
    /// excluded directory must still be walked.
    fn may_reinclude_under(&self, dir: &str) -> bool {
        self.patterns.iter().any(|p| p.exception && (p.text.starts_with(&format!("{dir}/")) || p.text.contains('*')))
    }
}

/// `.dockerignore`'s clean-up of a pattern.
fn clean(pattern: &str) -> String {
    let mut text = pattern.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_owned();
    while text.contains("//") {
        text = text.replace("//", "/");
    }
    text
}

fn tokenize(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() { Token::All } else { Token::Dirs });
                continue;
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::One),
            '[' => {
                if let Some(end) = chars[i + 1..].iter().position(|&c| c == ']').map(|p| p + i + 1) {
                    let mut body = &chars[i + 1..end];
                    let negated = matches!(body.first(), Some('!' | '^'));
                    if negated {
                        body = &body[1..];
                    }
                    let mut ranges = Vec::new();
                    let mut j = 0;
                    while j < body.len() {
                        if j + 2 < body.len() && body[j + 1] == '-' {
                            ranges.push((body[j], body[j + 2]));
                            j += 3;
                        } else {
                            ranges.push((body[j], body[j]));
                            j += 1;
                        }
                    }
                    tokens.push(Token::Class(negated, ranges));
                    i = end + 1;
                    continue;
                }
                tokens.push(Token::Char('['));
            }
            '\\' if i + 1 < chars.len() => {
                tokens.push(Token::Char(chars[i + 1]));
                i += 2;
                continue;
            }
            c => tokens.push(Token::Char(c)),
        }
        i += 1;
    }
    tokens
}

/// Whether the whole of `text` matches `tokens` (backtracking; patterns
/// and paths are short).
fn matches(tokens: &[Token], text: &[char]) -> bool {
    match tokens.split_first() {
        None => text.is_empty(),
        Some((Token::All, _)) => true,
        Some((Token::Char(c), rest)) => text.first() == Some(c) && matches(rest, &text[1..]),
        Some((Token::One, rest)) => text.first().is_some_and(|&c| c != '/') && matches(rest, &text[1..]),
        Some((Token::Class(negated, ranges), rest)) => text.first().is_some_and(|&c| {
            c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated && matches(rest, &text[1..])
        }),
        Some((Token::Star, rest)) => {
            (0..=text.len()).take_while(|&n| n == 0 || text[n - 1] != '/').any(|n| matches(rest, &text[n..]))
        }
        // Zero directories, or any prefix that ends at a `/`.
        Some((Token::Dirs, rest)) => {
            matches(rest, text) || (0..text.len()).any(|n| text[n] == '/' && matches(rest, &text[n + 1..]))
        }
    }
}

/// Never in a context, whatever the ignore files say: they hold secrets.
fn secret(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let in_local = path.split('/').any(|part| part == ".local");
    let env_file = name == ".env" || (name.starts_with(".env.") && !name.ends_with(".example"));
    in_local || env_file
}

/// The build context: the workspace at `root` minus what `ignore` excludes
/// and the secrets, plus `dockerfile` at `DOCKERFILE`, as a tar archive.
pub fn context(root: &Path, ignore: &Ignore, dockerfile: &str) -> anyhow::Result<Vec<u8>> {
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    walk(root, "", ignore, &mut files)?;
    files.insert(DOCKERFILE.to_owned(), Entry::File { data: dockerfile.as_bytes().to_vec(), executable: false });
    let mut archive = tar::Builder::new(Vec::new());
    for (path, entry) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::File { data, executable } => {
                header.set_size(data.len() as u64);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_entry_type(tar::EntryType::Regular);
                archive.append_data(&mut header, &path, data.as_slice())
            }
            Entry::Symlink(target) => {
                header.set_size(0);
                header.set_mode(0o777);
                header.set_entry_type(tar::EntryType::Symlink);
                archive.append_link(&mut header, &path, &target)
            }
        }
        .with_context(|| format!("failed to add {path} to the build context"))?;
    }
    archive.into_inner().context("failed to finish the build context")
}

enum Entry {
    File { data: Vec<u8>, executable: bool },
    Symlink(std::path::PathBuf),
}

fn walk(root: &Path, dir: &str, ignore: &Ignore, files: &mut BTreeMap<String, Entry>) -> anyhow::Result<()> {
    let here = if dir.is_empty() { root.to_owned() } else { root.join(dir) };
    let entries = fs::read_dir(&here).with_context(|| format!("failed to read {}", here.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to read {}", here.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            bail!("{}: a file name that is not UTF-8 cannot go into the build context", entry.path().display());
        };
        let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
        if secret(&path) {
            continue;
        }
        let kind = entry.file_type().with_context(|| format!("failed to read {}", entry.path().display()))?;
        let excluded = ignore.excludes(&path);
        if kind.is_dir() {
            if !excluded || ignore.may_reinclude_under(&path) {
                walk(root, &path, ignore, files)?;
            }
        } else if excluded {
            continue;
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path()).with_context(|| format!("failed to read {path}"))?;
            files.insert(path, Entry::Symlink(target));
        } else if kind.is_file() {
            let metadata = entry.metadata().with_context(|| format!("failed to read {path}"))?;
            let data = fs::read(entry.path()).with_context(|| format!("failed to read {path}"))?;
            files.insert(path, Entry::File { data, executable: metadata.permissions().mode() & 0o111 != 0 });
        }
    }
    Ok(())
}

/// The images a Dockerfile's stages start from, in order, without
/// `scratch` and the names of its own earlier stages.
pub fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let mut words = words.skip_while(|w| w.starts_with("--"));
        let Some(image) = words.next() else { continue };
        if image != "scratch" && !stages.iter().any(|s| s == image) && !images.iter().any(|i| i == image) {
            images.push(image.to_owned());
        }
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("AS"))
            && let Some(name) = words.next()
        {
            stages.push(name.to_owned());
        }
    }
    images
}

/// Renders `environment`'s Dockerfile (and its ignore file) in memory and
/// makes the build context from the workspace at `root`: (the Dockerfile's
/// text, the context).
pub fn rendered_context(root: &Path, environment: &Environment) -> anyhow::Result<(String, Vec<u8>)> {
    let files = render::render(root, environment, Upstreams::Deployed)?;
    let Some(dockerfile) = files.get("Dockerfile") else {
        bail!(
            "environment `{}` is a {} one and renders no Dockerfile; build with --env dev (or staging, prod)",
            environment.name,
            environment.model.kind
        );
    };
    let mut ignore = Ignore::default();
    let path = root.join(DOCKERIGNORE);
    match fs::read_to_string(&path) {
        Ok(text) => ignore.add(&text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("failed to read {}", path.display())),
    }
    if let Some(text) = files.get("Dockerfile.dockerignore") {
        ignore.add(text);
    }
    let context = context(root, &ignore, dockerfile)?;
    Ok((dockerfile.clone(), context))
}

/// What to build from the context.
pub struct Request<'a> {
    pub tag: &'a str,
    /// The Dockerfile's stage to build (`runtime`).
    pub target: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Engine {
    /// Pulls the base images of `dockerfile` the engine lacks, then builds
    /// `request.target` from `context` (made by `context`), streaming the
    /// builder's output to `progress`. Returns the image id.
    pub fn build_dockerfile(
        &self,
        dockerfile: &str,
        context: Vec<u8>,
        request: &Request<'_>,
        progress: &Progress,
    ) -> anyhow::Result<String> {
        for image in base_images(dockerfile) {
            self.ensure_image(&image, "a stage of the Dockerfile", progress)?;
        }
        let labels: HashMap<String, String> = request.labels.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::new()
            .dockerfile(DOCKERFILE)
            .t(request.tag)
            .target(request.target)
            .labels(&labels)
            .rm(true)
            .forcerm(true)
            .build();
        let mut log = progress.build_log();
        let id = self.build_with(options, context, request.tag, &mut log);
        let _ = log.flush();
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> Ignore {
        let mut ignore = Ignore::default();
        ignore.add(text);
        ignore
    }

    #[test]
    fn patterns_match_as_dockerignore_does() {
        let rules = ignore("# comment\n/target/\n.git\n**/node_modules\n*.md\n!README.md\ndocs/**/*.png\nsrc/?.tmp\n");
        for excluded in [
            "target",
            "target/debug/freedumb",
            ".git/HEAD",
            "node_modules/x.js",
            "xtask/validators/node_modules/a/b.js",
            "NOTES.md",
            "docs/a/b/c.png",
            "docs/c.png",
            "src/a.tmp",
        ] {
            assert!(rules.excludes(excluded), "{excluded} should be excluded");
        }
        for kept in ["README.md", "docs/README.md", "xtask/src/main.rs", "targets", "src/ab.tmp", "docs/c.jpg"] {
            assert!(!rules.excludes(kept), "{kept} should be kept");
        }
        assert!(!rules.excludes("docs/notes.md"), "`*.md` is for the top level only");
        let classes = ignore("[a-c]?.log\n[!x]y\n");
        assert!(classes.excludes("b1.log") && !classes.excludes("d1.log"));
        assert!(classes.excludes("ay") && !classes.excludes("xy"));
    }

    #[test]
    fn a_later_line_wins() {
        let rules = ignore("*.md\n!README.md\nREADME.md\n");
        assert!(rules.excludes("README.md"));
    }

    #[test]
    fn stages_base_images_are_found_without_scratch_or_earlier_stages() {
        let dockerfile = "# syntax\nFROM rust:1.90-bookworm AS build\nRUN x\nFROM --platform=linux/amd64 debian:bookworm-slim AS runtime\n\
                          COPY --from=build /a /a\nFROM runtime AS test\nFROM scratch\nFROM debian:bookworm-slim AS gateway\n";
        assert_eq!(base_images(dockerfile), ["rust:1.90-bookworm", "debian:bookworm-slim"]);
    }

    /// A workspace with everything a context must leave out.
    fn workspace() -> crate::scratch::ScratchDir {
        let dir = crate::scratch::ScratchDir::new("context");
        let files = [
            ("Cargo.toml", "[workspace]\n"),
            ("src/main.rs", "fn main() {}\n"),
            ("run.sh", "#!/bin/sh\n"),
            ("target/debug/freedumb", "binary"),
            (".git/HEAD", "ref: refs/heads/main\n"),
            (".local/secrets.env", "JWT_ACCESS_SECRET=hunter2\n"),
            ("services/.local/x", "secret"),
            (".env", "POSTGRES_PASSWORD=hunter2\n"),
            ("deploy/.env.production", "X=1\n"),
            ("deploy/.env.example", "X=\n"),
            ("web/node_modules/left-pad/index.js", "module.exports = 1\n"),
            ("NOTES.md", "notes\n"),
            ("README.md", "readme\n"),
            (".dockerignore", "target\n.git\n**/node_modules\n*.md\n!README.md\n!.local/secrets.env\n"),
        ];
        for (path, text) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
        }
        fs::set_permissions(dir.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn entries(context: &[u8]) -> BTreeMap<String, u32> {
        let mut archive = tar::Archive::new(context);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (entry.path().unwrap().to_string_lossy().into_owned(), entry.header().mode().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_context_holds_exactly_the_files_not_ignored_and_never_a_secret() {
        let dir = workspace();
        let ignore = ignore(&fs::read_to_string(dir.path().join(DOCKERIGNORE)).unwrap());

        let context = context(dir.path(), &ignore, "FROM scratch\n").unwrap();

        let entries = entries(&context);
        let paths: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [".dockerignore", DOCKERFILE, "Cargo.toml", "README.md", "deploy/.env.example", "run.sh", "src/main.rs",],
            "`!.local/secrets.env` in .dockerignore does not bring a secret back"
        );
        assert_eq!(entries["run.sh"], 0o755);
        assert_eq!(entries["src/main.rs"], 0o644);
    }

    #[test]
    fn the_same_tree_gives_the_same_context_whatever_the_file_times() {
        let dir = workspace();
        let ignore = ignore("target\n");
        let first = context(dir.path(), &ignore, "FROM scratch\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
        let second = context(dir.path(), &ignore, "FROM scratch\n").unwrap();
        assert!(first == second, "a rewrite with the same content changes nothing");
        fs::write(dir.path().join("src/main.rs"), "fn main() { }\n").unwrap();
        assert!(context(dir.path(), &ignore, "FROM scratch\n").unwrap() != first);
    }

    /// The workspace's own context for `dev`: the sources and the lock
    /// file, never build output, history, dependencies of the validators
    /// or secrets; and the Dockerfile is one the classic builder takes.
    #[test]
    fn the_workspace_build_context_has_the_sources_and_nothing_else() {
        let root = crate::project_root();
        let dev = crate::environment::load(&root, "dev").unwrap();

        let (dockerfile, context) = rendered_context(&root, &dev).unwrap();

        let buildkit_only = |line: &str| line.starts_with("RUN --mount") || line.starts_with("# syntax=");
        assert!(!dockerfile.lines().any(buildkit_only), "the classic builder refuses:\n{dockerfile}");
        let entries = entries(&context);
        for needed in ["Cargo.toml", "Cargo.lock", "services/freedumb/src/main.rs", "xtask/src/main.rs", DOCKERFILE] {
            assert!(entries.contains_key(needed), "{needed} is missing from the context");
        }
        for path in entries.keys() {
            let parts: Vec<&str> = path.split('/').collect();
            assert!(!["target", ".git", ".local"].contains(&parts[0]), "{path} is excluded");
            assert!(!parts.contains(&"node_modules"), "{path} is excluded");
            assert!(!secret(path), "{path} holds secrets");
        }
        assert!(context.len() < 40_000_000, "the context is {} bytes", context.len());
        assert!(rendered_context(&root, &dev).unwrap().1 == context, "the same tree gives the same context");
    }

    /// A base image no registry has: the build stops at it, naming it and
    /// the registry's error, before the context is sent. (`.invalid` never
    /// resolves, so this fails the same way on a machine with registry
    /// access, instead of pulling the real Rust image and building.)
    #[test]
    fn the_dockerfile_build_fails_naming_the_base_image_it_cannot_pull() {
        let root = crate::project_root();
        let mut dev = crate::environment::load(&root, "dev").unwrap();
        dev.model.platform.build.rust_image = "freedumb-test-absent.invalid/rust:1".to_owned();
        let engine = Engine::connect().unwrap_or_else(|err| panic!("{err:#}"));
        let rust = dev.model.platform.build.rust_image.clone();
        assert!(!engine.has_image(&rust).unwrap(), "this test expects {rust} to be absent from the engine");
        let (dockerfile, context) = rendered_context(&root, &dev).unwrap();
        let labels = BTreeMap::new();
        let request = Request { tag: "freedumb:dockerfile-test", target: "runtime", labels: &labels };

        let err = engine.build_dockerfile(&dockerfile, context, &request, &Progress::lines()).unwrap_err();

        let err = format!("{err:#}");
        assert!(
            err.starts_with(&format!("the image {rust} (for a stage of the Dockerfile) is not on this engine")),
            "{err}"
        );
        assert!(err.contains("could not be pulled: "), "{err}");
        assert!(!engine.has_image("freedumb:dockerfile-test").unwrap());
    }
}
