//! Whether a function's schemas keep a named contract's promises.
//!
//! A function implementing a contract must accept every input the contract accepts and
//! give back only outputs the contract allows: its `input` must be *at least as wide* as
//! the contract's, its `output` *at most as wide*. [`breaks`] proves that keyword by
//! keyword and reports each place it cannot ([`Break`]). It is conservative: what it
//! cannot compare (a `pattern`, `oneOf`, a `$ref`...) must be the same on both sides, so
//! a change it calls breaking may in fact be safe (promote then needs `--force`), but one
//! it lets through is safe for the keywords it knows.

use serde::Serialize;
use serde_json::{Map, Value};

/// One place where a schema breaks the contract: `at` is a JSON pointer into the
/// contract's schemas (`/input/properties/to`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Break {
    pub at: String,
    pub reason: String,
}

/// The breaks of an implementation (`own_*`, its manifest's schemas, `None`: not
/// declared) against a contract's schemas (`None`: anything).
pub fn breaks(
    contract_input: Option<&Value>,
    contract_output: Option<&Value>,
    own_input: Option<&Value>,
    own_output: Option<&Value>,
) -> Vec<Break> {
    let anything = Value::Bool(true);
    let mut out = Vec::new();
    // Inputs: the function's own must accept all the contract's.
    wider(
        own_input.unwrap_or(&anything),
        contract_input.unwrap_or(&anything),
        "/input",
        &mut out,
    );
    // Outputs: the contract's must allow all the function's.
    match (contract_output, own_output) {
        (Some(c), None) if !accepts_anything(c) => out.push(Break {
            at: "/output".into(),
            reason:
                "the contract constrains the output, the deployment declares no contract.output"
                    .into(),
        }),
        _ => wider(
            contract_output.unwrap_or(&anything),
            own_output.unwrap_or(&anything),
            "/output",
            &mut out,
        ),
    }
    out
}

/// Keywords that do not constrain (annotations).
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentMediaType",
    "contentEncoding",
];

/// Lower bounds: `narrow`'s must be at least `wide`'s.
const LOWER: &[&str] = &[
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
];
/// Upper bounds: `narrow`'s must be at most `wide`'s.
const UPPER: &[&str] = &[
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
];

fn constraints(schema: &Value) -> Option<&Map<String, Value>> {
    schema.as_object()
}

fn accepts_anything(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
        _ => false,
    }
}

fn accepts_nothing(schema: &Value) -> bool {
    schema == &Value::Bool(false)
}

/// Records where some value valid under `narrow` may be refused by `wide`.
fn wider(wide: &Value, narrow: &Value, at: &str, out: &mut Vec<Break>) {
    if wide == narrow || accepts_anything(wide) || accepts_nothing(narrow) {
        return;
    }
    let fail = |out: &mut Vec<Break>, at: String, reason: String| out.push(Break { at, reason });
    let Some(w) = constraints(wide) else {
        // `false` (or not a schema) against a narrow that accepts something.
        return fail(out, at.into(), "refuses every value".into());
    };
    let n = constraints(narrow);
    let get = |k: &str| n.and_then(|n| n.get(k));
    // What `narrow` may have that `wide` does not (when both have it, it must be the
    // same: the loop below): values `wide`'s other keywords do not see.
    for key in [
        "$defs",
        "$id",
        "$anchor",
        "patternProperties",
        "prefixItems",
    ] {
        if get(key).is_some() && w.get(key).is_none() {
            out.push(Break {
                at: format!("{at}/{key}"),
                reason: format!("{key} cannot be compared: it must be the same on both sides"),
            });
        }
    }
    for (key, wv) in w {
        let key = key.as_str();
        let here = format!("{at}/{key}");
        if ANNOTATIONS.contains(&key) {
            continue;
        }
        match key {
            "type" => {
                let wt = types(wv);
                let within = |t: &String| {
                    wt.contains(t) || (t == "integer" && wt.iter().any(|w| w == "number"))
                };
                match get("type").map(types) {
                    Some(nt) if nt.iter().all(within) => {}
                    Some(nt) => fail(
                        out,
                        here,
                        format!("allows only {wt:?}, the other side {nt:?}"),
                    ),
                    None => fail(
                        out,
                        here,
                        format!("allows only {wt:?}, the other side any type"),
                    ),
                }
            }
            "required" => {
                let theirs: Vec<&str> = get("required")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for r in wv
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !theirs.contains(&r) {
                        fail(
                            out,
                            here.clone(),
                            format!("requires {r:?}, which the other side may leave out"),
                        );
                    }
                }
            }
            "enum" | "const" => {
                let allowed: Vec<&Value> = match (key, wv) {
                    ("enum", Value::Array(a)) => a.iter().collect(),
                    _ => vec![wv],
                };
                let theirs: Option<Vec<&Value>> = match (get("const"), get("enum")) {
                    (Some(c), _) => Some(vec![c]),
                    (None, Some(Value::Array(a))) => Some(a.iter().collect()),
                    _ => None,
                };
                match theirs {
                    Some(values) => {
                        for v in values.into_iter().filter(|v| !allowed.contains(v)) {
                            fail(
                                out,
                                here.clone(),
                                format!("does not allow {v}, which the other side does"),
                            );
                        }
                    }
                    None => fail(
                        out,
                        here,
                        "allows only listed values, the other side does not list them".into(),
                    ),
                }
            }
            "properties" => {
                let Some(props) = wv.as_object() else {
                    continue;
                };
                for (name, ws) in props {
                    let ns = property_schema(n, name);
                    wider(ws, &ns, &format!("{here}/{}", escape(name)), out);
                }
            }
            "additionalProperties" => {
                let known: Vec<&String> = w
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().collect())
                    .unwrap_or_default();
                // Every property the other side names that `wide` has no schema for...
                if let Some(props) = get("properties").and_then(Value::as_object) {
                    for (name, ns) in props.iter().filter(|(k, _)| !known.contains(k)) {
                        wider(wv, ns, &format!("{at}/properties/{}", escape(name)), out);
                    }
                }
                // ...and the rest.
                let theirs = get("additionalProperties")
                    .cloned()
                    .unwrap_or(Value::Bool(true));
                wider(wv, &theirs, &here, out);
            }
            "items" => {
                let theirs = get("items").cloned().unwrap_or(Value::Bool(true));
                wider(wv, &theirs, &here, out);
            }
            k if LOWER.contains(&k) || UPPER.contains(&k) => {
                let kept = get(k).and_then(Value::as_f64).zip(wv.as_f64()).is_some_and(
                    |(theirs, ours)| {
                        if LOWER.contains(&k) {
                            theirs >= ours
                        } else {
                            theirs <= ours
                        }
                    },
                );
                if !kept {
                    let theirs = get(k).map_or_else(|| "none".to_string(), Value::to_string);
                    fail(
                        out,
                        here,
                        format!("{k} {wv} is not kept by the other side (it has {theirs})"),
                    );
                }
            }
            // Anything else (pattern, format, multipleOf, allOf, anyOf, oneOf, not, $ref,
            // if/then/else, dependent*, prefixItems, contains, unevaluated*...) must match.
            _ => {
                if get(key) != Some(wv) {
                    fail(
                        out,
                        here,
                        format!("{key} cannot be compared: it must be the same on both sides"),
                    );
                }
            }
        }
    }
}

/// The schema `narrow` gives property `name`: its own, else its `additionalProperties`,
/// else anything.
fn property_schema(narrow: Option<&Map<String, Value>>, name: &str) -> Value {
    let Some(n) = narrow else {
        return Value::Bool(true);
    };
    n.get("properties")
        .and_then(|p| p.get(name))
        .or_else(|| n.get("additionalProperties"))
        .cloned()
        .unwrap_or(Value::Bool(true))
}

fn types(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// A JSON pointer token (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract_input() -> Value {
        json!({
            "type": "object",
            "required": ["to"],
            "properties": {
                "to": {"type": "string", "maxLength": 100},
                "kind": {"enum": ["plain", "html"]}
            }
        })
    }

    fn at(breaks: &[Break]) -> Vec<&str> {
        breaks.iter().map(|b| b.at.as_str()).collect()
    }

    #[test]
    fn the_same_or_a_wider_input_keeps_the_contract() {
        let c = contract_input();
        assert!(breaks(Some(&c), None, Some(&c), None).is_empty());
        assert!(
            breaks(Some(&c), None, None, None).is_empty(),
            "no schema accepts all"
        );
        let wider = json!({
            "type": "object",
            "properties": {
                "to": {"type": "string", "maxLength": 200},
                "kind": {"enum": ["plain", "html", "markdown"]},
                "cc": {}
            }
        });
        assert_eq!(breaks(Some(&c), None, Some(&wider), None), vec![]);
        // A property the contract leaves open may be anything: constraining it breaks.
        let constrained = json!({"type": "object", "properties": {"cc": {"type": "array"}}});
        assert_eq!(
            at(&breaks(Some(&c), None, Some(&constrained), None)),
            ["/input/properties/cc/type"]
        );
    }

    #[test]
    fn a_narrower_input_breaks_it_where_it_narrows() {
        let c = contract_input();
        let narrower = json!({
            "type": "object",
            "required": ["to", "subject"],
            "properties": {
                "to": {"type": "string", "maxLength": 50},
                "kind": {"enum": ["plain"]}
            },
            "additionalProperties": false
        });
        let b = breaks(Some(&c), None, Some(&narrower), None);
        let places = at(&b);
        for expected in [
            "/input/required",
            "/input/properties/to/maxLength",
            "/input/properties/kind/enum",
            "/input/additionalProperties",
        ] {
            assert!(places.contains(&expected), "{expected} in {b:?}");
        }
        let other_type = json!({"type": "array"});
        assert_eq!(
            at(&breaks(Some(&c), None, Some(&other_type), None)),
            ["/input/type"]
        );
    }

    #[test]
    fn outputs_must_stay_within_the_contract() {
        let c =
            json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}});
        let same = c.clone();
        assert!(breaks(None, Some(&c), None, Some(&same)).is_empty());
        let more = json!({"type": "object", "required": ["id", "at"], "properties": {"id": {"type": "string", "minLength": 1}, "at": {"type": "integer"}}});
        assert!(
            breaks(None, Some(&c), None, Some(&more)).is_empty(),
            "narrower is fine"
        );
        let dropped = json!({"type": "object", "properties": {"id": {"type": ["string", "null"]}}});
        let b = breaks(None, Some(&c), None, Some(&dropped));
        let mut places = at(&b);
        places.sort();
        assert_eq!(
            places,
            ["/output/properties/id/type", "/output/required"],
            "{b:?}"
        );
        let undeclared = breaks(None, Some(&c), None, None);
        assert_eq!(at(&undeclared), ["/output"]);
        assert!(breaks(None, Some(&json!({"description": "any"})), None, None).is_empty());
    }

    #[test]
    fn what_cannot_be_compared_must_be_equal() {
        let c = json!({"type": "string", "pattern": "^[a-z]+$"});
        assert!(breaks(Some(&c), None, Some(&c), None).is_empty());
        let other = json!({"type": "string", "pattern": "^[a-z0-9]+$"});
        assert_eq!(
            at(&breaks(Some(&c), None, Some(&other), None)),
            ["/input/pattern"]
        );
        let integer = json!({"type": "integer"});
        let number = json!({"type": "number"});
        assert!(breaks(Some(&integer), None, Some(&number), None).is_empty());
        assert_eq!(
            at(&breaks(Some(&number), None, Some(&integer), None)),
            ["/input/type"]
        );
        assert!(
            breaks(
                Some(&json!(false)),
                None,
                Some(&json!({"type": "string"})),
                None
            )
            .is_empty()
        );
        assert_eq!(
            at(&breaks(Some(&json!(true)), None, Some(&json!(false)), None)),
            ["/input"]
        );
    }
}
