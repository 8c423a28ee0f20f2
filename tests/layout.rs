//! The source tree as a newcomer meets it: `api/` a one-way stack of
//! modules, `health/` taking nothing from `api/`, no file too long to hold
//! in one's head, and `docs/design.md`'s map of the modules matching the
//! tree. Reads the sources as text; builds nothing and needs no services.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The modules of `src/api/`, bottom layer first. A module may use modules
/// of the layers below its own, never its own layer or one above: so there
/// is no circle of imports. A new module of `api/` must be placed here.
const API_LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves: nothing of api",
        &[
            "body",
            "caller",
            "observe",
            "scrape",
            "shares",
            "tls",
            "transport",
            "wire",
        ],
    ),
    ("the HTTP/1 server of the listeners", &["http_server"]),
    (
        "requests into domain types, results into responses",
        &["convert"],
    ),
    ("the JSON shapes of the HTTP API", &["json"]),
    (
        "every error, its gRPC status and its HTTP answer",
        &["status"],
    ),
    ("limits and cross-site checks", &["limits", "origin"]),
    ("who is calling", &["auth"]),
    ("the job service", &["grpc"]),
    ("a job's changes as server-sent events", &["events"]),
    ("the HTTP JSON routes", &["rest"]),
    ("the routers", &["http"]),
];

/// Longest a source file may be. The house aims at about 600 lines; past
/// this a file does several things and is split by concern.
const MAX_LINES: usize = 800;

/// Files allowed past [`MAX_LINES`], each with the reason. Empty: keep it so.
const LONGER_ALLOWED: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, as paths relative to `base`, sorted.
fn rust_files(base: &Path, dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            found.extend(rust_files(base, &path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path.strip_prefix(base).unwrap().to_path_buf());
        }
    }
    found
}

/// The module path of a file under `src/`: `api/auth/jwt.rs` is
/// `["api", "auth", "jwt"]`, `api/auth/mod.rs` is `["api", "auth"]`.
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// `source` with comments, string and character literals blanked out, so
/// that a path in a doc comment or a message is not taken for an import.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime.
            let close = if next == Some('\\') {
                (i + 3..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other,
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
            continue;
        }
        match c {
            ':' if chars.get(i + 1) == Some(&':') => {
                out.push(Token::PathSep);
                i += 1;
            }
            '{' => out.push(Token::Open),
            '}' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            '*' => out.push(Token::Star),
            c if c.is_whitespace() => {}
            _ => out.push(Token::Other),
        }
        i += 1;
    }
    out
}

/// Every path anchored at `crate`, `super` or `self` in the file of module
/// `module` (uses and paths in code alike), resolved from the crate's root:
/// `use super::{a::B, c}` in `api/x.rs` gives `api::a::B` and `api::c`. A
/// glob ends in `*`. Inline modules (`mod tests { ... }`) move `super`.
fn anchored_paths(module: &[String], source: &str) -> Vec<Vec<String>> {
    let tokens = tokens(&code_only(source));
    // The module path at each brace depth opened by an inline `mod`.
    let mut scopes: Vec<(usize, Vec<String>)> = vec![(0, module.to_vec())];
    let mut depth = 0;
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) if word == "mod" => {
                if let (Some(Token::Ident(name)), Some(Token::Open)) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    let mut inner = scopes.last().unwrap().1.clone();
                    inner.push(name.clone());
                    depth += 1;
                    scopes.push((depth, inner));
                    i += 3;
                    continue;
                }
            }
            Token::Open => depth += 1,
            Token::Close => {
                if scopes.last().is_some_and(|(at, _)| *at == depth) && scopes.len() > 1 {
                    scopes.pop();
                }
                depth -= 1;
            }
            Token::Ident(word)
                if matches!(word.as_str(), "crate" | "super" | "self")
                    && tokens.get(i + 1) == Some(&Token::PathSep)
                    && !matches!(i.checked_sub(1).map(|p| &tokens[p]), Some(Token::PathSep)) =>
            {
                let current = &scopes.last().unwrap().1;
                let mut base = match word.as_str() {
                    "crate" => Vec::new(),
                    "self" => current.clone(),
                    _ => {
                        let mut up = current.clone();
                        up.pop();
                        up
                    }
                };
                i += 2;
                while let (Some(Token::Ident(word)), Some(Token::PathSep)) =
                    (tokens.get(i), tokens.get(i + 1))
                {
                    if word == "super" {
                        base.pop();
                    } else {
                        base.push(word.clone());
                    }
                    i += 2;
                }
                i = path_tail(&tokens, i, base, &mut found);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Reads what follows `prefix::` at `i`: a name, a glob or a `{...}` group
/// (recursively); pushes each full path; returns where it stopped.
fn path_tail(
    tokens: &[Token],
    mut i: usize,
    prefix: Vec<String>,
    found: &mut Vec<Vec<String>>,
) -> usize {
    match tokens.get(i) {
        Some(Token::Ident(name)) => {
            let mut path = prefix;
            if name != "self" {
                path.push(name.clone());
            }
            found.push(path);
            i + 1
        }
        Some(Token::Star) => {
            let mut path = prefix;
            path.push("*".to_owned());
            found.push(path);
            i + 1
        }
        Some(Token::Open) => {
            i += 1;
            loop {
                match tokens.get(i) {
                    None => return i,
                    Some(Token::Close) => return i + 1,
                    Some(Token::Comma) => i += 1,
                    Some(_) => {
                        let mut item = prefix.clone();
                        while let (Some(Token::Ident(word)), Some(Token::PathSep)) =
                            (tokens.get(i), tokens.get(i + 1))
                        {
                            item.push(word.clone());
                            i += 2;
                        }
                        i = path_tail(tokens, i, item, found);
                        // `as` renames and the like: on to the next item.
                        while !matches!(tokens.get(i), None | Some(Token::Comma | Token::Close)) {
                            i += 1;
                        }
                    }
                }
            }
        }
        _ => {
            found.push(prefix);
            i
        }
    }
}

/// The modules of `src/api/` (files and folders), and the names `api/mod.rs`
/// re-exports with the module each comes from (`JobsApi` from `grpc`).
struct Api {
    modules: BTreeSet<String>,
    reexports: BTreeMap<String, String>,
}

impl Api {
    fn read(src: &Path) -> Self {
        let mut modules = BTreeSet::new();
        for entry in fs::read_dir(src.join("api")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                modules.insert(name);
            } else if let Some(stem) = name.strip_suffix(".rs")
                && stem != "mod"
            {
                modules.insert(stem.to_owned());
            }
        }
        let root = fs::read_to_string(src.join("api/mod.rs")).unwrap();
        Self::with(modules, &root)
    }

    fn with(modules: BTreeSet<String>, root_source: &str) -> Self {
        let tokens = tokens(&code_only(root_source));
        let mut reexports = BTreeMap::new();
        for (i, window) in tokens.windows(3).enumerate() {
            if let [Token::Ident(pub_), Token::Ident(use_), Token::Ident(from)] = window
                && pub_ == "pub"
                && use_ == "use"
                && modules.contains(from)
            {
                let mut j = i + 3;
                while let Some(token) = tokens.get(j) {
                    match token {
                        Token::Ident(name) if name != "self" => {
                            reexports.insert(name.clone(), from.clone());
                        }
                        Token::Other => break,
                        _ => {}
                    }
                    j += 1;
                }
            }
        }
        Self { modules, reexports }
    }

    /// The module of `api` a resolved path lands in, if any.
    fn module_of_path(&self, path: &[String]) -> Option<String> {
        match path {
            [api, name, ..] if api == "api" => {
                if self.modules.contains(name) || name == "*" {
                    Some(name.clone())
                } else {
                    self.reexports.get(name).cloned()
                }
            }
            _ => None,
        }
    }
}

fn layer_of(module: &str) -> Option<usize> {
    API_LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// What is wrong with the uses of the api module `own` in one of its files.
fn layering_faults(
    api: &Api,
    own: &str,
    file: &str,
    module: &[String],
    source: &str,
) -> Vec<String> {
    let mut faults = BTreeSet::new();
    let Some(own_layer) = layer_of(own) else {
        return vec![format!(
            "{file}: api::{own} is in no layer of API_LAYERS; place it there"
        )];
    };
    for path in anchored_paths(module, source) {
        let Some(used) = api.module_of_path(&path) else {
            continue;
        };
        if used == own {
            continue;
        }
        if used == "*" {
            faults.insert(format!(
                "{file}: `{}` takes all of api at once; name the modules below it",
                path.join("::")
            ));
            continue;
        }
        match layer_of(&used) {
            Some(layer) if layer < own_layer => {}
            Some(_) => {
                faults.insert(format!(
                    "{file}: api::{own} uses api::{used} (`{}`), which is not below it",
                    path.join("::")
                ));
            }
            None => {
                faults.insert(format!("{file}: uses api::{used}, which is in no layer"));
            }
        }
    }
    faults.into_iter().collect()
}

#[test]
fn api_modules_use_only_the_layers_below_their_own() {
    let src = root().join("src");
    let api = Api::read(&src);
    let mut faults = Vec::new();
    for module in &api.modules {
        if layer_of(module).is_none() {
            faults.push(format!(
                "api::{module} is in no layer of API_LAYERS; place it there"
            ));
        }
    }
    for (_, modules) in API_LAYERS {
        for module in *modules {
            if !api.modules.contains(*module) {
                faults.push(format!(
                    "API_LAYERS names api::{module}, which does not exist"
                ));
            }
        }
    }
    for file in rust_files(&src, &src.join("api")) {
        let module = module_of(&file);
        let [_, own, ..] = module.as_slice() else {
            continue; // api/mod.rs: the root, which assembles the layers.
        };
        let source = fs::read_to_string(src.join(&file)).unwrap();
        faults.extend(layering_faults(
            &api,
            own,
            &file.display().to_string(),
            &module,
            &source,
        ));
    }
    assert!(
        faults.is_empty(),
        "api/ is not a one-way stack:\n{}",
        faults.join("\n")
    );
}

#[test]
fn health_takes_nothing_from_api() {
    let src = root().join("src");
    let mut faults = Vec::new();
    for file in rust_files(&src, &src.join("health")) {
        let source = fs::read_to_string(src.join(&file)).unwrap();
        for path in anchored_paths(&module_of(&file), &source) {
            if path.first().is_some_and(|first| first == "api") {
                faults.push(format!("{}: uses `{}`", file.display(), path.join("::")));
            }
        }
    }
    assert!(
        faults.is_empty(),
        "health/ must not reach into api/ (move what both need below both):\n{}",
        faults.join("\n")
    );
}

#[test]
fn the_layering_check_finds_a_use_that_reaches_up_or_sideways() {
    let modules: BTreeSet<String> = API_LAYERS
        .iter()
        .flat_map(|(_, modules)| modules.iter().map(|m| (*m).to_owned()))
        .collect();
    let api = Api::with(
        modules,
        "mod grpc;\npub use grpc::{ApiDeps, JobsApi};\npub use status::ApiError;\n",
    );
    let module = |path: &str| -> Vec<String> { path.split("::").map(str::to_owned).collect() };
    let faults = |own: &str, source: &str| {
        layering_faults(&api, own, "x.rs", &module(&format!("api::{own}")), source)
    };
    // Up, by a use, a re-export of the root, a path in code, a glob.
    assert_eq!(
        faults("status", "use super::{caller::Caller, grpc::JobsApi};").len(),
        1
    );
    assert_eq!(faults("status", "use crate::api::JobsApi;").len(), 1);
    assert_eq!(faults("json", "fn f() { super::rest::routes(); }").len(), 1);
    assert_eq!(faults("limits", "use super::*;").len(), 1);
    // Sideways: the same layer.
    assert_eq!(
        faults("limits", "use super::origin::same_origin_writes;").len(),
        1
    );
    // Down, itself, comments, strings and a test module's `super` are fine.
    assert!(faults("rest", "use super::{status::HttpError, grpc::JobsApi};").is_empty());
    assert!(
        faults(
            "status",
            "// use super::grpc::JobsApi;\nconst S: &str = \"super::rest::x\";"
        )
        .is_empty()
    );
    assert!(
        faults(
            "status",
            "mod tests { use super::*; use super::super::json::ErrorJson; }"
        )
        .is_empty()
    );
    assert_eq!(
        faults("status", "mod tests { use super::super::grpc::JobsApi; }").len(),
        1
    );
    // A module missing from the table is named.
    assert_eq!(faults("dashboard", "").len(), 1);
    // A file of a module's folder: `super` is the module itself.
    assert!(
        layering_faults(
            &api,
            "auth",
            "auth/jwt.rs",
            &module("api::auth::jwt"),
            "use super::keys::PublicKey; use crate::api::status::AuthError;"
        )
        .is_empty()
    );
}

#[test]
fn no_source_file_is_longer_than_the_limit() {
    let src = root().join("src");
    let mut too_long = Vec::new();
    for file in rust_files(&root(), &src) {
        let name = file.display().to_string();
        let lines = fs::read_to_string(root().join(&file))
            .unwrap()
            .lines()
            .count();
        let allowed = LONGER_ALLOWED.iter().any(|(path, _)| *path == name);
        if lines > MAX_LINES && !allowed {
            too_long.push(format!("{name}: {lines} lines"));
        }
    }
    assert!(
        too_long.is_empty(),
        "split these by concern (or add them to LONGER_ALLOWED with the reason):\n{}",
        too_long.join("\n")
    );
}

/// The `## Modules` section of `docs/design.md`.
fn modules_section() -> String {
    let design = fs::read_to_string(root().join("docs/design.md")).unwrap();
    let start = design
        .find("\n## Modules\n")
        .expect("docs/design.md has a `## Modules` section");
    let rest = &design[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |at| at + 3);
    rest[..end].to_owned()
}

/// The paths the module tree of the section draws: each line of its first
/// code block is `<guides><name>[/]  <what it does>`, four columns of
/// guides per level.
fn drawn_tree(section: &str) -> Vec<(String, bool)> {
    let block = section
        .split("```")
        .nth(1)
        .expect("the Modules section draws the tree in a code block");
    let mut drawn = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    for line in block.lines().skip(1) {
        let Some(start) = line.find(|c: char| c.is_alphanumeric() || c == '_') else {
            continue;
        };
        let level = line[..start].chars().count() / 4;
        let name = line[start..].split_whitespace().next().unwrap();
        let has_description = line[start + name.len()..].trim().len() > 2;
        stack.truncate(level);
        let path = stack
            .iter()
            .map(String::as_str)
            .chain([name])
            .collect::<String>();
        drawn.push((path, has_description));
        if name.ends_with('/') {
            stack.push(name.to_owned());
        }
    }
    drawn
}

#[test]
fn the_design_doc_draws_every_module_and_names_real_functions() {
    let section = modules_section();
    let drawn = drawn_tree(&section);
    let mut faults = Vec::new();
    let mut expected = BTreeSet::new();
    for file in rust_files(&root(), &root().join("src")) {
        let path = file.display().to_string();
        let mut folder = String::new();
        for part in file.parent().unwrap().iter() {
            folder.push_str(&part.to_string_lossy());
            folder.push('/');
            expected.insert(folder.clone());
        }
        expected.insert(path);
    }
    let drawn_paths: BTreeSet<String> = drawn.iter().map(|(path, _)| path.clone()).collect();
    for missing in expected.difference(&drawn_paths) {
        faults.push(format!("not drawn: {missing}"));
    }
    for extra in drawn_paths.difference(&expected) {
        if extra.ends_with(".rs") || extra.ends_with('/') {
            faults.push(format!("drawn but not in the tree: {extra}"));
        }
    }
    for (path, described) in &drawn {
        if !described && path.ends_with(".rs") {
            faults.push(format!("drawn without saying what it does: {path}"));
        }
    }
    // Every function the paths of a create and a drain name exists.
    let sources: String = rust_files(&root(), &root().join("src"))
        .iter()
        .map(|file| fs::read_to_string(root().join(file)).unwrap())
        .collect();
    let prose = section.split("```").step_by(2).collect::<String>();
    let mut named = 0;
    for quoted in prose.split('`').skip(1).step_by(2) {
        if let Some(call) = quoted.strip_suffix("()") {
            named += 1;
            let function = call.rsplit("::").next().unwrap();
            if !sources.contains(&format!("fn {function}("))
                && !sources.contains(&format!("fn {function}<"))
            {
                faults.push(format!("names `{quoted}`, which no source file defines"));
            }
        } else if quoted.ends_with(".rs")
            && !root().join("src").join(quoted).exists()
            && !root().join(quoted).exists()
        {
            // A file of src/ (`api/wire.rs`) or of the repository (`tests/layout.rs`).
            faults.push(format!("names `{quoted}`, which is no file"));
        }
    }
    if named < 10 {
        faults.push(format!(
            "the paths of a create and a drain name only {named} functions"
        ));
    }
    assert!(
        faults.is_empty(),
        "docs/design.md, Modules:\n{}",
        faults.join("\n")
    );
}
