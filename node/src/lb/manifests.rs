//! The `--manifests DIR` source: upstream Kubernetes Service and
//! EndpointSlice YAML (multi-document files), read whole on every change.
//!
//! Reading is strict where a typo would silently change behaviour: unknown
//! fields are errors (kubectl's `--validate=strict` view), reported with
//! the file and object and the object skipped. A YAML syntax error skips
//! the rest of that file only. Other kinds are ignored, so a directory of
//! full application manifests works.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::de::DeserializeOwned;

use super::model::{ObjectError, Snapshot, Sourced};

/// Files considered: `*.yaml`, `*.yml`, `*.json`, not hidden (editors' swap
/// and temp files start with a dot), in name order.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext_ok = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if ext_ok && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every manifest file in `dir` into one snapshot.
pub fn read_dir(dir: &Path) -> std::io::Result<Snapshot> {
    let files: Vec<ManifestFile> = manifest_files(dir)?
        .into_iter()
        .map(|file| {
            let origin: Arc<str> = file.display().to_string().into();
            let text = std::fs::read_to_string(&file).map_err(|e| format!("read: {e}"));
            (origin, text)
        })
        .collect();
    let mut snap = Snapshot::default();
    parse_files(&files, default_threads(&files), &mut snap);
    Ok(snap)
}

/// A manifest file's origin (path) and its text, or why it could not be read.
type ManifestFile = (Arc<str>, Result<String, String>);

/// Below this much YAML per thread a second thread costs more than it saves.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// One per CPU, but none that would get less than [`PARALLEL_MIN_BYTES`].
fn default_threads(files: &[ManifestFile]) -> usize {
    let total: usize = files
        .iter()
        .filter_map(|(_, t)| t.as_ref().ok())
        .map(String::len)
        .sum();
    super::parallel::cpus()
        .min(total / PARALLEL_MIN_BYTES)
        .max(1)
}

/// Parses files' documents into `snap`, on `threads` threads.
///
/// Why threads: 10 000 Services with their EndpointSlices are ~15 MB of
/// YAML, and parsing it was two thirds of what programming them cost. The
/// result does not depend on `threads`: objects and errors come out in
/// file and document order, documents are numbered per file as a stream
/// parse numbers them, and a YAML syntax error skips the rest of its file.
fn parse_files(files: &[ManifestFile], threads: usize, snap: &mut Snapshot) {
    let docs: Vec<(usize, Chunk<'_>)> = files
        .iter()
        .enumerate()
        .filter_map(|(i, (_, text))| Some((i, text.as_ref().ok()?)))
        .flat_map(|(i, text)| split_documents(text).into_iter().map(move |c| (i, c)))
        .collect();
    let parsed = parse_all(&docs, threads);
    let mut parsed = docs.iter().map(|(f, _)| *f).zip(parsed).peekable();
    for (i, (origin, text)) in files.iter().enumerate() {
        if let Err(message) = text {
            snap.errors.push(ObjectError {
                origin: origin.clone(),
                object: String::new(),
                message: message.clone(),
            });
            continue;
        }
        let (mut number, mut broken) = (0, false);
        while let Some((_, outcomes)) = parsed.next_if(|(f, _)| *f == i) {
            for outcome in outcomes {
                if broken {
                    break;
                }
                number += 1;
                broken = !merge(origin, number, outcome, snap);
            }
        }
    }
}

/// One document's text (normally; see [`split_documents`]) and the line of
/// the file it starts on, so errors can name the file's line numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk<'a> {
    text: &'a str,
    first_line: usize,
}

/// A line that is a document marker: `---` or `...` at column 0, followed
/// by nothing or whitespace. YAML forbids such a line inside any content
/// (spec 1.2, c-forbidden), so cutting there never splits a scalar.
fn marker(line: &str) -> Option<u8> {
    let b = line.as_bytes();
    let m = (b.len() >= 3 && (&b[..3] == b"---" || &b[..3] == b"...")).then(|| b[0])?;
    matches!(b.get(3), None | Some(b' ' | b'\t' | b'\r' | b'\n')).then_some(m)
}

/// Cuts a YAML stream into documents by their markers, without parsing.
/// Lines before a document's `---` that hold no content (blank lines,
/// comments, `%` directives) stay with that document, as directives must.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    // A byte order mark is not content (libyaml skips it too).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    // The document being collected: where it starts, and whether it holds
    // anything yet (only then is it cut off as a document of its own).
    let (mut start, mut start_line, mut has_content) = (0, 1, false);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let end = offset + line.len();
        // (cut before this line, cut after it, this line is content)
        let (before, after, content) = match marker(line) {
            Some(b'-') => (true, false, true),
            // `...` ends the document it follows.
            Some(_) => (false, true, false),
            // A directive belongs to the next document, even right after
            // one that has no `...` (libyaml allows that).
            None if line.starts_with('%') => (true, false, false),
            None => {
                let t = line.trim_start();
                (false, false, !(t.is_empty() || t.starts_with('#')))
            }
        };
        if before && has_content {
            out.push(Chunk {
                text: &text[start..offset],
                first_line: start_line,
            });
            (start, start_line, has_content) = (offset, line_no, false);
        }
        has_content |= content;
        if after {
            if has_content {
                out.push(Chunk {
                    text: &text[start..end],
                    first_line: start_line,
                });
            }
            (start, start_line, has_content) = (end, line_no + 1, false);
        }
        offset = end;
    }
    if has_content {
        out.push(Chunk {
            text: &text[start..],
            first_line: start_line,
        });
    }
    out
}

/// What one document turned out to be.
enum Outcome {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    /// Empty, or a kind that is not ours.
    Skip,
    /// The object was read but is not valid: `(object, message)`.
    Invalid(String, String),
    MissingKind,
    /// Not YAML: the message, with line numbers of the file.
    Syntax(String),
}

/// Appends `outcome` (document `number` of `origin`) to `snap`; false when
/// it was a syntax error, after which the rest of the file is not trusted.
fn merge(origin: &Arc<str>, number: usize, outcome: Outcome, snap: &mut Snapshot) -> bool {
    let error = |object: String, message: String| ObjectError {
        origin: origin.clone(),
        object,
        message,
    };
    match outcome {
        Outcome::Service(obj) => snap.services.push(Sourced {
            origin: origin.clone(),
            obj: *obj,
        }),
        Outcome::Slice(obj) => snap.slices.push(Sourced {
            origin: origin.clone(),
            obj: *obj,
        }),
        Outcome::Skip => {}
        Outcome::Invalid(object, message) => snap.errors.push(error(object, message)),
        Outcome::MissingKind => snap
            .errors
            .push(error(format!("document {number}"), "missing kind".into())),
        Outcome::Syntax(e) => {
            snap.errors.push(error(
                String::new(),
                format!("invalid YAML in document {number}: {e}"),
            ));
            return false;
        }
    }
    true
}

/// Parses every chunk on `threads` threads, each taking a contiguous run
/// of about the same number of bytes; results in input order.
fn parse_all(docs: &[(usize, Chunk<'_>)], threads: usize) -> Vec<Vec<Outcome>> {
    if threads <= 1 || docs.len() < 2 {
        return docs.iter().map(|(_, c)| parse_chunk(c)).collect();
    }
    let total: usize = docs.iter().map(|(_, c)| c.text.len()).sum();
    let mut runs = Vec::with_capacity(threads);
    let (mut from, mut bytes) = (0, 0);
    for (i, (_, c)) in docs.iter().enumerate() {
        bytes += c.text.len();
        if bytes * threads >= total * (runs.len() + 1) || i + 1 == docs.len() {
            runs.push(&docs[from..=i]);
            from = i + 1;
        }
    }
    super::parallel::map_runs(&runs, |(_, c)| parse_chunk(c))
}

/// The documents of one chunk (one, unless the text holds stray markers
/// the splitter does not cut at, such as `--- ` inside a flow collection).
fn parse_chunk(chunk: &Chunk<'_>) -> Vec<Outcome> {
    use serde::Deserialize as _;
    let mut out = Vec::with_capacity(1);
    for doc in serde_yaml::Deserializer::from_str(chunk.text) {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.push(Outcome::Syntax(relocate(&e, chunk.first_line)));
                return out;
            }
        };
        out.push(classify(value));
    }
    out
}

/// serde_yaml's message with the chunk's line numbers (`line N column`,
/// possibly twice: the problem and its context) turned into the file's.
fn relocate(e: &serde_yaml::Error, first_line: usize) -> String {
    let msg = e.to_string();
    let mut out = String::with_capacity(msg.len() + 8);
    let mut rest = msg.as_str();
    while let Some(i) = rest.find("line ") {
        let (head, tail) = rest.split_at(i + "line ".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        match tail[..digits].parse::<usize>() {
            Ok(n) if tail[digits..].starts_with(" column") => {
                out.push_str(&(n + first_line - 1).to_string());
                rest = &tail[digits..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

fn classify(value: serde_yaml::Value) -> Outcome {
    if value.is_null() {
        return Outcome::Skip; // empty document (e.g. a trailing `---`)
    }
    let api = value.get("apiVersion").and_then(|v| v.as_str());
    let kind = value.get("kind").and_then(|v| v.as_str());
    match (api, kind) {
        (Some("v1"), Some("Service")) => strict::<Service>(value, "Service").map_or_else(
            |(o, m)| Outcome::Invalid(o, m),
            |s| Outcome::Service(Box::new(s)),
        ),
        (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => {
            strict::<EndpointSlice>(value, "EndpointSlice").map_or_else(
                |(o, m)| Outcome::Invalid(o, m),
                |s| Outcome::Slice(Box::new(s)),
            )
        }
        (_, Some(_)) => Outcome::Skip, // another kind: not ours
        (_, None) => Outcome::MissingKind,
    }
}

fn object_name(v: &serde_yaml::Value, kind: &str) -> String {
    let meta = v.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string()
    };
    let ns = field("namespace");
    format!(
        "{kind} {}/{}",
        if ns.is_empty() { "default" } else { &ns },
        field("name")
    )
}

/// Deserializes with unknown fields reported as errors: `Err((object,
/// message))`.
fn strict<T: DeserializeOwned>(
    value: serde_yaml::Value,
    kind: &str,
) -> Result<T, (String, String)> {
    let object = object_name(&value, kind);
    let mut unknown = Vec::new();
    let res: Result<T, _> = serde_ignored::deserialize(value, |path| {
        // serde_ignored marks Option layers as `?`; users think in field paths.
        unknown.push(path.to_string().replace(".?", "").replace("?.", ""))
    });
    match res {
        Err(e) => Err((object, e.to_string())),
        Ok(_) if !unknown.is_empty() => {
            Err((object, format!("unknown field(s): {}", unknown.join(", "))))
        }
        Ok(obj) => Ok(obj),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(texts: &[(&str, &str)], threads: usize) -> Snapshot {
        let texts: Vec<ManifestFile> = texts
            .iter()
            .map(|(o, t)| (Arc::from(*o), Ok(t.to_string())))
            .collect();
        let mut s = Snapshot::default();
        parse_files(&texts, threads, &mut s);
        s
    }

    fn parse(text: &str) -> Snapshot {
        files(&[("f.yaml", text)], 1)
    }

    fn svc(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}]}}\n"
        )
    }

    /// What a snapshot says, comparable.
    fn summary(s: &Snapshot) -> (Vec<String>, Vec<String>, Vec<String>) {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        (
            s.services
                .iter()
                .map(|o| format!("{} {}", o.origin, name(&o.obj.metadata)))
                .collect(),
            s.slices
                .iter()
                .map(|o| format!("{} {}", o.origin, name(&o.obj.metadata)))
                .collect(),
            s.errors.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn errors_come_in_file_order() {
        let files: Vec<ManifestFile> = vec![
            (Arc::from("a.yaml"), Ok("kind: [\n".into())),
            (Arc::from("b.yaml"), Err("read: permission denied".into())),
            (
                Arc::from("c.yaml"),
                Ok(format!("{}---\nmetadata: {{}}\n", svc("c"))),
            ),
        ];
        let mut s = Snapshot::default();
        parse_files(&files, 2, &mut s);
        let errors: Vec<String> = s.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("a.yaml: invalid YAML in document 1"),
            "{errors:?}"
        );
        assert_eq!(errors[1], "b.yaml: read: permission denied");
        assert_eq!(errors[2], "c.yaml: document 2: missing kind");
        assert_eq!(s.services.len(), 1);
    }

    #[test]
    fn splits_at_markers_only() {
        let text = "# head\n%YAML 1.2\n---\na: 1\n----\n--- b: 2\n...\n# tail\n---\n---\t# c\nc: \"---\"\n";
        let got: Vec<(usize, &str)> = split_documents(text)
            .iter()
            .map(|c| (c.first_line, c.text))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "# head\n%YAML 1.2\n---\na: 1\n----\n"),
                (6, "--- b: 2\n...\n"),
                (8, "# tail\n---\n"),
                (10, "---\t# c\nc: \"---\"\n"),
            ]
        );
        assert!(split_documents("").is_empty());
        assert!(split_documents("# only a comment\n\n").is_empty());
    }

    /// The parse this module did before documents were split: one stream,
    /// numbered as libyaml sees it. The oracle for `matches_a_stream_parse`.
    fn stream_parse(origin: &str, text: &str) -> Snapshot {
        use serde::Deserialize as _;
        let origin: Arc<str> = Arc::from(origin);
        let mut snap = Snapshot::default();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let outcome = match serde_yaml::Value::deserialize(doc) {
                Ok(v) => classify(v),
                Err(e) => Outcome::Syntax(e.to_string()),
            };
            if !merge(&origin, i + 1, outcome, &mut snap) {
                break;
            }
        }
        snap
    }

    #[test]
    fn matches_a_stream_parse() {
        let a = svc("a");
        let b = svc("b");
        let flow = "--- {apiVersion: v1, kind: Service, metadata: {name: f}, spec: {ports: [{port: 80}]}}\n";
        let json = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j"}, "spec": {"ports": [{"port": 80}]}}"#;
        let dup = "apiVersion: v1\nkind: Service\nmetadata: {name: d}\nspec:\n  ports: [{port: 80}]\n  ports: [{port: 443}]\n";
        let typed = "apiVersion: v1\nkind: Service\nmetadata: {name: t, labels: {x: true}}\nspec: {ports: [{port: 80}]}\n";
        let corpus = [
            String::new(),
            "# only a comment\n".into(),
            format!("{a}---\n{b}"),
            format!("# head\n---\n{a}---\n---\n{b}---\n"),
            format!("%YAML 1.2\n---\n{a}"),
            format!("{a}...\n---\n{b}"),
            format!("{a}%YAML 1.2\n---\n{b}"),
            format!("{flow}{a}"),
            format!("\u{feff}{a}---\n{b}"),
            format!("\u{feff}# c\n---\n{a}---\nkind: [\n---\n{b}"),
            format!("{a}---\nmetadata: {{name: x}}\n---\n{b}"),
            format!("{a}---\nkind: Service\nmetadata: {{name: [a\n---\n{b}"),
            format!("{a}---\n{dup}---\n{typed}---\n{b}"),
            format!("{a}---\n{b}").replace('\n', "\r\n"),
            json.into(),
        ];
        // Syntax errors are compared up to their document number: libyaml
        // words a problem at a cut differently ("end of stream" where the
        // whole stream said "document indicator").
        let norm = |s: Snapshot| {
            let (svcs, slices, errors) = summary(&s);
            let errors: Vec<String> = errors
                .into_iter()
                .map(|e| match e.find("invalid YAML in document ") {
                    Some(i) => match e[i..].find(':') {
                        Some(j) => e[..i + j].to_string(),
                        None => e,
                    },
                    None => e,
                })
                .collect();
            (svcs, slices, errors)
        };
        for text in &corpus {
            // With a byte order mark the stream parse misread the first
            // key (`\u{feff}apiVersion`); the split parse skips the mark.
            let want = norm(stream_parse("f.yaml", text.trim_start_matches('\u{feff}')));
            for threads in [1, 2] {
                assert_eq!(
                    norm(files(&[("f.yaml", text)], threads)),
                    want,
                    "threads={threads} input {text:?}"
                );
            }
        }
    }

    #[test]
    fn document_numbers_and_lines_are_the_files() {
        // The empty second document counts, as in a stream parse; the
        // syntax error is on lines 8-9 of the file (2-3 of its document).
        let text = format!(
            "{}---\n---\nkind: Service\nmetadata: {{name: [a\n---\n{}",
            svc("a"),
            svc("b")
        );
        let s = parse(&text);
        assert_eq!(
            s.services.len(),
            1,
            "the document after the error is skipped"
        );
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        let e = s.errors[0].to_string();
        assert!(e.contains("invalid YAML in document 3"), "{e}");
        assert!(
            e.ends_with("at line 9 column 1, while parsing a flow sequence at line 8 column 18"),
            "{e}"
        );
    }

    #[test]
    fn threads_change_nothing() {
        // Three files; the second has an invalid object and a syntax error
        // halfway, which must skip only the rest of that file.
        let mut big = String::new();
        for i in 0..3000 {
            big.push_str(&svc(&format!("s{i}")));
            big.push_str("---\n");
        }
        let mut broken = String::new();
        for i in 0..3000 {
            if i == 1000 {
                broken.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: 80}], typo: 1}\n---\n");
            }
            if i == 2000 {
                broken.push_str("kind: [\n---\n");
            }
            broken.push_str(&svc(&format!("t{i}")));
            broken.push_str("---\n");
        }
        let input = [
            ("a.yaml", big.as_str()),
            ("b.yaml", broken.as_str()),
            ("c.yaml", big.as_str()),
        ];
        let one = summary(&files(&input, 1));
        assert_eq!(one.0.len(), 3000 + 2000 + 3000);
        assert_eq!(one.2.len(), 2, "{:?}", one.2);
        assert!(
            one.2[0].starts_with("b.yaml: Service default/bad: unknown field(s): spec.typo"),
            "{}",
            one.2[0]
        );
        assert!(
            one.2[1].contains("invalid YAML in document 2002"),
            "{}",
            one.2[1]
        );
        for threads in [2, 3, 7] {
            assert_eq!(summary(&files(&input, threads)), one, "threads={threads}");
        }
    }

    #[test]
    fn multi_document_with_other_kinds() {
        let s = parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n",
        );
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.services.len(), 1);
    }

    #[test]
    fn unknown_field_is_named_and_the_object_skipped() {
        let s = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns1}\nspec: {ports: [{port: 80}], clusterIp: 10.0.0.1}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 81}]}\n",
        );
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.errors.len(), 1);
        let e = s.errors[0].to_string();
        assert!(
            e.starts_with("f.yaml: Service ns1/a: unknown field(s): spec.clusterIp"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_invalid_yaml() {
        let s = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n",
        );
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].to_string().contains("Service default/a"));
        let s = parse("apiVersion: v1\nkind: Service\nmetadata: {name: [a\n");
        assert_eq!(s.errors.len(), 1);
        assert!(
            s.errors[0].message.contains("invalid YAML"),
            "{}",
            s.errors[0]
        );
    }
}
