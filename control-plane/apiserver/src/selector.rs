//! Label and field selectors as the list and watch query parameters carry
//! them: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
//! comma-joined (all must hold). Field selectors support `=`, `==`, `!=`
//! on `metadata.name`, `metadata.namespace`, `spec.nodeName`,
//! `status.phase` and any other dotted path present in the object.
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Req>,
    /// Field selectors match paths in the object, labels match labels.
    fields: bool,
}

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

impl Selector {
    pub fn labels(s: &str) -> Result<Self, String> {
        Self::parse(s, false)
    }

    pub fn fields(s: &str) -> Result<Self, String> {
        Self::parse(s, true)
    }

    fn parse(s: &str, fields: bool) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for t in terms(s) {
            let bad = || format!("unable to parse requirement {t:?}");
            let r = if let Some((k, v)) = t.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if fields {
                return Err(bad());
            } else if let Some((k, v)) = t.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set(v).ok_or_else(bad)?)
            } else if let Some((k, v)) = t.split_once(" in ") {
                Req::In(k.trim().into(), set(v).ok_or_else(bad)?)
            } else if let Some(k) = t.strip_prefix('!') {
                Req::Absent(k.trim().into())
            } else if t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Req::Exists(t.into())
            } else {
                return Err(bad());
            };
            reqs.push(r);
        }
        Ok(Self { reqs, fields })
    }

    fn value(&self, obj: &Value, key: &str) -> Option<String> {
        let v = if self.fields {
            key.split('.').try_fold(obj, |v, part| v.get(part))?
        } else {
            obj.get("metadata")?.get("labels")?.get(key)?
        };
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Whether every path this selector reads is one of `paths` (always,
    /// for label selectors).
    pub fn reads_only(&self, paths: &[&str]) -> bool {
        !self.fields
            || self.reqs.iter().all(|r| match r {
                Req::Eq(k, _)
                | Req::Ne(k, _)
                | Req::In(k, _)
                | Req::NotIn(k, _)
                | Req::Exists(k)
                | Req::Absent(k) => paths.contains(&k.as_str()),
            })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => self.value(obj, k).as_deref() == Some(v.as_str()),
            // Like upstream, != also matches objects without the key.
            Req::Ne(k, v) => self.value(obj, k).as_deref() != Some(v.as_str()),
            Req::In(k, vs) => self.value(obj, k).is_some_and(|x| vs.contains(&x)),
            Req::NotIn(k, vs) => self.value(obj, k).is_none_or(|x| !vs.contains(&x)),
            Req::Exists(k) => self.value(obj, k).is_some(),
            Req::Absent(k) => self.value(obj, k).is_none(),
        })
    }
}

/// A `metav1.LabelSelector` object in the query-string form (what a
/// Scale's `status.selector` carries); terms sorted so the text is stable.
pub fn to_string(sel: &Value) -> String {
    let mut terms: Vec<String> = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            terms.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let vals = || {
            let mut v: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            v.sort();
            v.join(",")
        };
        terms.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", vals()),
            "NotIn" => format!("{key} notin ({})", vals()),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    terms.sort();
    terms.join(",")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "gold"}}});
        for (s, want) in [
            ("app=web", true),
            ("app==web,tier=gold", true),
            ("app!=web", false),
            ("app in (web, api)", true),
            ("tier notin (gold)", false),
            ("app", true),
            ("!app", false),
            ("missing!=x", true),
            ("app in (api),tier=gold", false),
        ] {
            assert_eq!(Selector::labels(s).expect(s).matches(&o), want, "{s}");
        }
        assert!(Selector::labels("app in web").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(
            Selector::fields("metadata.name=a,spec.nodeName=n1")
                .expect("valid")
                .matches(&o)
        );
        assert!(
            !Selector::fields("status.phase!=Running")
                .expect("valid")
                .matches(&o)
        );
        assert!(Selector::fields("metadata.name").is_err());
    }

    #[test]
    fn label_selector_objects_print_as_queries_that_parse_back() {
        let sel = json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]});
        let s = to_string(&sel);
        assert_eq!(s, "!canary,app=web,tier in (a,b)");
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "a"}}});
        assert!(Selector::labels(&s).expect("parses").matches(&o));
    }
}
