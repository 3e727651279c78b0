use super::*;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// 2024-01-01T00:00:00Z, a Monday.
const MONDAY: u64 = 1_704_067_200;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

fn time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// An invocation to evaluate; Monday 10:00 UTC by default.
struct Req {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    role: &'static str,
    now: SystemTime,
}

impl Req {
    fn new(method: &'static str, path: &'static str) -> Req {
        Req {
            method,
            path,
            query: None,
            headers: HeaderMap::new(),
            role: "invoker",
            now: time(MONDAY + 10 * HOUR),
        }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }

    fn query(mut self, query: &'static str) -> Req {
        self.query = Some(query);
        self
    }

    fn role(mut self, role: &'static str) -> Req {
        self.role = role;
        self
    }

    fn at(mut self, now: SystemTime) -> Req {
        self.now = now;
        self
    }

    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: self.method,
            path: self.path,
            query: self.query,
            headers: &self.headers,
            caller_org: "acme",
            caller_role: self.role,
            caller_token_id: "tok_1",
            now: self.now,
        }
    }
}

fn compile(json: &str) -> CompiledPolicy {
    Policy::from_json(json)
        .expect("policy parses")
        .compile()
        .expect("policy compiles")
}

fn refusal(json: &str) -> String {
    Policy::from_json(json)
        .expect("policy parses")
        .compile()
        .expect_err("policy is refused")
        .to_string()
}

/// The refusal of a policy with one rule `r` (deny) that has these extra fields.
fn refusal_of(fields: serde_json::Value) -> String {
    let mut rule = json!({"name": "r", "effect": "deny"});
    if let (Some(object), Some(extra)) = (rule.as_object_mut(), fields.as_object()) {
        for (key, value) in extra {
            object.insert(key.clone(), value.clone());
        }
    }
    refusal(&json!({ "rules": [rule] }).to_string())
}

fn decide(policy: &CompiledPolicy, req: &Req) -> Decision {
    policy.evaluate(&req.facts())
}

fn deny(rule: &str, reason: &str) -> Decision {
    Decision::Deny {
        rule: rule.to_owned(),
        reason: reason.to_owned(),
    }
}

fn denied_by(decision: &Decision) -> Option<&str> {
    match decision {
        Decision::Allow => None,
        Decision::Deny { rule, .. } => Some(rule.as_str()),
    }
}

const EXAMPLE: &str = r#"{
  "default": "allow",
  "rules": [
    {"name": "no-deletes", "effect": "deny", "methods": ["DELETE"]},
    {"name": "admin-api", "effect": "deny", "paths": ["/admin/**"], "when": "request.caller.role != 'admin'"},
    {"name": "office-hours", "effect": "allow", "days": ["mon","tue","wed","thu","fri"], "hours": {"from": 9, "to": 17}},
    {"name": "beta-header", "effect": "allow", "when": "request.headers['x-beta'] == '1' && request.query['v'] == '2'"}
  ]
}"#;

#[test]
fn methods_allow_and_deny() {
    let json = r#"{"rules":[{"name":"no-deletes","effect":"deny","methods":["delete"]}]}"#;
    let policy = Policy::from_json(json).expect("parses");
    assert_eq!(policy.rules[0].methods, vec!["DELETE".to_owned()]);
    let p = policy.compile().expect("compiles");
    assert_eq!(
        decide(&p, &Req::new("DELETE", "/x")),
        deny(
            "no-deletes",
            r#"denied by rule "no-deletes" (method DELETE)"#
        )
    );
    assert_eq!(
        denied_by(&decide(&p, &Req::new("delete", "/x"))),
        Some("no-deletes")
    );
    assert_eq!(decide(&p, &Req::new("GET", "/x")), Decision::Allow);
    assert_eq!(decide(&p, &Req::new("POST", "/x")), Decision::Allow);

    // A policy built in code with lower-case methods matches the same way.
    let built = Policy {
        default: Effect::Allow,
        rules: vec![Rule {
            name: "no-puts".to_owned(),
            effect: Effect::Deny,
            methods: vec!["put".to_owned()],
            paths: vec![],
            days: vec![],
            hours: None,
            when: None,
        }],
    };
    let p = built.compile().expect("compiles");
    assert_eq!(
        denied_by(&decide(&p, &Req::new("PUT", "/x"))),
        Some("no-puts")
    );
    assert!(decide(&p, &Req::new("GET", "/x")).is_allow());
}

#[test]
fn path_globs() {
    let p = compile(
        r#"{"rules":[
            {"name":"admin","effect":"deny","paths":["/admin/**"]},
            {"name":"abc","effect":"deny","paths":["/a/*/c"]},
            {"name":"version","effect":"deny","paths":["/v?/x"]},
            {"name":"deep","effect":"deny","paths":["/d/**/z","/e"]}
        ]}"#,
    );
    let cases = [
        ("/admin/x", Some("admin")),
        ("/admin/x/y", Some("admin")),
        ("/admin/", Some("admin")),
        ("/admin", None),
        ("/administrator", None),
        ("/a/b/c", Some("abc")),
        ("/a/b/d/c", None),
        ("/a/b/c/d", None),
        ("/v1/x", Some("version")),
        ("/v10/x", None),
        ("/v/x", None),
        ("/d/z", Some("deep")),
        ("/d/q/r/z", Some("deep")),
        ("/e", Some("deep")),
        ("/e/f", None),
    ];
    for (path, rule) in cases {
        let decision = decide(&p, &Req::new("GET", path));
        assert_eq!(denied_by(&decision), rule, "path {path}");
    }
    assert_eq!(
        decide(&p, &Req::new("GET", "/admin/x")),
        deny("admin", r#"denied by rule "admin" (path /admin/x)"#)
    );
}

#[test]
fn time_windows() {
    let p = compile(
        r#"{"default":"deny","rules":[
            {"name":"office-hours","effect":"allow","days":["mon","TUE","wed","thu","fri"],"hours":{"from":9,"to":17}}
        ]}"#,
    );
    let at = |secs| Req::new("GET", "/x").at(time(secs));
    assert!(decide(&p, &at(MONDAY + 10 * HOUR)).is_allow());
    assert!(decide(&p, &at(MONDAY + 9 * HOUR)).is_allow());
    assert_eq!(
        decide(&p, &at(MONDAY + 9 * HOUR - 1)),
        deny("default", "denied by default: no rule allowed GET /x")
    );
    assert!(!decide(&p, &at(MONDAY + 17 * HOUR)).is_allow());
    // Tuesday 16:59.
    assert!(decide(&p, &at(MONDAY + DAY + 16 * HOUR + 59 * 60)).is_allow());
    // Saturday and Sunday 10:00.
    assert!(!decide(&p, &at(MONDAY + 5 * DAY + 10 * HOUR)).is_allow());
    assert!(!decide(&p, &at(MONDAY + 6 * DAY + 10 * HOUR)).is_allow());

    // A window that wraps midnight.
    let p = compile(r#"{"rules":[{"name":"night","effect":"deny","hours":{"from":22,"to":6}}]}"#);
    assert_eq!(
        decide(&p, &at(MONDAY + 23 * HOUR)),
        deny("night", r#"denied by rule "night" (hour 23)"#)
    );
    assert!(!decide(&p, &at(MONDAY + 22 * HOUR)).is_allow());
    assert!(!decide(&p, &at(MONDAY)).is_allow());
    assert!(!decide(&p, &at(MONDAY + DAY + 3 * HOUR)).is_allow());
    assert!(!decide(&p, &at(MONDAY + 6 * HOUR - 1)).is_allow());
    assert!(decide(&p, &at(MONDAY + 6 * HOUR)).is_allow());
    assert!(decide(&p, &at(MONDAY + 22 * HOUR - 1)).is_allow());

    let p = compile(r#"{"rules":[{"name":"weekend","effect":"deny","days":["sat","sun"]}]}"#);
    assert_eq!(
        decide(&p, &at(MONDAY + 5 * DAY + 10 * HOUR)),
        deny("weekend", r#"denied by rule "weekend" (day sat)"#)
    );
    assert!(decide(&p, &at(MONDAY + 4 * DAY + 23 * HOUR)).is_allow());
}

#[test]
fn expressions_over_headers_and_query() {
    let p = compile(
        r#"{"default":"deny","rules":[{"name":"beta-header","effect":"allow","when":"request.headers['x-beta'] == '1' && request.query['v'] == '2'"}]}"#,
    );
    let beta = || Req::new("GET", "/x").header("x-beta", "1");
    assert!(decide(&p, &beta().query("v=2")).is_allow());
    // The first value of a repeated key.
    assert!(decide(&p, &beta().query("v=2&v=3")).is_allow());
    assert_eq!(
        denied_by(&decide(&p, &beta().query("v=3&v=2"))),
        Some("default")
    );
    let off = Req::new("GET", "/x").header("x-beta", "0").query("v=2");
    assert_eq!(denied_by(&decide(&p, &off)), Some("default"));

    let p = compile(
        r#"{"default":"deny","rules":[
            {"name":"name","effect":"allow","when":"'name' in request.query && request.query['name'] == 'a b/c'"},
            {"name":"tags","effect":"allow","when":"'x-tag' in request.headers && request.headers['x-tag'] == 'a, b'"}
        ]}"#,
    );
    for query in [
        "name=a%20b%2Fc",
        "name=a+b%2fc",
        "other=1&name=a%20b%2Fc&name=zzz",
        "?name=a%20b/c",
    ] {
        let req = Req::new("GET", "/x").query(query);
        assert!(decide(&p, &req).is_allow(), "query {query}");
    }
    // Repeated headers are joined with ", ".
    let tagged = Req::new("GET", "/x")
        .header("x-tag", "a")
        .header("x-tag", "b");
    assert!(decide(&p, &tagged).is_allow());
    let once = Req::new("GET", "/x").header("x-tag", "a");
    assert_eq!(denied_by(&decide(&p, &once)), Some("default"));

    let p = compile(
        r#"{"default":"deny","rules":[{"name":"api-posts","effect":"allow","when":"request.method == 'POST' && request.path.startsWith('/api/') && size(request.headers) == 0"}]}"#,
    );
    assert!(decide(&p, &Req::new("post", "/api/items")).is_allow());
    assert!(!decide(&p, &Req::new("POST", "/web")).is_allow());
}

#[test]
fn expressions_over_the_caller() {
    let p = compile(
        r#"{"rules":[{"name":"admin-api","effect":"deny","paths":["/admin/**"],"when":"request.caller.role != 'admin'"}]}"#,
    );
    assert_eq!(
        decide(&p, &Req::new("GET", "/admin/users").role("developer")),
        deny(
            "admin-api",
            r#"denied by rule "admin-api" (path /admin/users, expression true)"#
        )
    );
    assert!(decide(&p, &Req::new("GET", "/admin/users").role("admin")).is_allow());
    assert!(decide(&p, &Req::new("GET", "/public").role("developer")).is_allow());

    let p = compile(
        r#"{"default":"deny","rules":[{"name":"acme","effect":"allow","when":"request.caller.org == 'acme' && request.caller.token_id == 'tok_1' && request.caller['role'] == 'invoker'"}]}"#,
    );
    assert!(decide(&p, &Req::new("GET", "/x")).is_allow());
}

#[test]
fn expressions_over_time() {
    let p = compile(
        r#"{"default":"deny","rules":[{"name":"hours","effect":"allow","when":"request.hour >= 9 && request.hour < 17 && request.weekday == 'mon'"}]}"#,
    );
    let at = |secs| Req::new("GET", "/x").at(time(secs));
    assert!(decide(&p, &at(MONDAY + 10 * HOUR)).is_allow());
    assert!(!decide(&p, &at(MONDAY + 8 * HOUR)).is_allow());
    assert!(!decide(&p, &at(MONDAY + DAY + 10 * HOUR)).is_allow());

    let p = compile(
        r#"{"default":"deny","rules":[{"name":"stamp","effect":"allow","when":"request.time > timestamp('2023-12-31T00:00:00Z') && request.time.getDayOfWeek() == 1 && request.time.getHours() == 10 && request.time - timestamp('2024-01-01T00:00:00Z') < duration('11h')"}]}"#,
    );
    assert!(decide(&p, &at(MONDAY + 10 * HOUR)).is_allow());
    assert!(!decide(&p, &at(MONDAY + 11 * HOUR)).is_allow());
    assert!(!decide(&p, &at(MONDAY + DAY + 10 * HOUR)).is_allow());
}

#[test]
fn first_matching_rule_decides() {
    let p = compile(
        r#"{"rules":[
            {"name":"allow-a","effect":"allow","paths":["/a/**"]},
            {"name":"deny-get","effect":"deny","methods":["GET"]}
        ]}"#,
    );
    assert!(decide(&p, &Req::new("GET", "/a/x")).is_allow());
    assert_eq!(
        denied_by(&decide(&p, &Req::new("GET", "/b"))),
        Some("deny-get")
    );
    assert!(decide(&p, &Req::new("POST", "/b")).is_allow());

    let p = compile(
        r#"{"rules":[
            {"name":"deny-get","effect":"deny","methods":["GET"]},
            {"name":"allow-a","effect":"allow","paths":["/a/**"]}
        ]}"#,
    );
    assert_eq!(
        denied_by(&decide(&p, &Req::new("GET", "/a/x"))),
        Some("deny-get")
    );

    // A rule without conditions matches everything.
    let p =
        compile(r#"{"rules":[{"name":"all","effect":"deny"},{"name":"never","effect":"allow"}]}"#);
    assert_eq!(
        decide(&p, &Req::new("GET", "/x")),
        deny("all", r#"denied by rule "all" (every request)"#)
    );
}

#[test]
fn default_deny() {
    let p = compile(r#"{"default":"deny"}"#);
    assert_eq!(
        decide(&p, &Req::new("GET", "/x")),
        deny("default", "denied by default: no rule allowed GET /x")
    );
    let p = compile(
        r#"{"default":"deny","rules":[{"name":"posts","effect":"allow","methods":["POST"]}]}"#,
    );
    assert!(decide(&p, &Req::new("POST", "/x")).is_allow());
    assert_eq!(
        denied_by(&decide(&p, &Req::new("GET", "/x"))),
        Some("default")
    );
}

#[test]
fn failing_expressions_deny() {
    let p = compile(
        r#"{"rules":[{"name":"beta-header","effect":"allow","when":"request.headers['x-beta'] == '1' && request.query['v'] == '2'"}]}"#,
    );
    // Missing header: the allow rule denies (fail closed) instead of falling through.
    assert_eq!(
        decide(&p, &Req::new("GET", "/x")),
        deny(
            "beta-header",
            r#"rule "beta-header": expression failed: No such key: x-beta"#
        )
    );
    assert_eq!(
        decide(&p, &Req::new("GET", "/x").header("x-beta", "1")),
        deny(
            "beta-header",
            r#"rule "beta-header": expression failed: No such key: v"#
        )
    );

    // Guarded with `in`, a missing header just does not match.
    let p = compile(
        r#"{"default":"deny","rules":[{"name":"guarded","effect":"allow","when":"'x-beta' in request.headers && request.headers['x-beta'] == '1'"}]}"#,
    );
    assert_eq!(
        denied_by(&decide(&p, &Req::new("GET", "/x"))),
        Some("default")
    );

    let p = compile(r#"{"rules":[{"name":"not-bool","effect":"allow","when":"request.path"}]}"#);
    assert_eq!(
        decide(&p, &Req::new("GET", "/x")),
        deny(
            "not-bool",
            r#"rule "not-bool": expression failed: result is string, not bool"#
        )
    );

    let p = compile(
        r#"{"rules":[{"name":"member","effect":"allow","when":"request.headers.beta == '1'"}]}"#,
    );
    let decision = decide(&p, &Req::new("GET", "/x"));
    assert!(
        matches!(&decision, Decision::Deny { rule, reason } if rule == "member" && reason.contains("No such key: beta")),
        "{decision:?}"
    );

    let p = compile(
        r#"{"rules":[{"name":"list","effect":"allow","when":"[1, 2][request.hour] == 1"}]}"#,
    );
    let decision = decide(&p, &Req::new("GET", "/x"));
    assert!(
        matches!(&decision, Decision::Deny { reason, .. } if reason.contains("index out of range")),
        "{decision:?}"
    );

    // The interpreter panics on a comprehension over a string: caught, and the rule denies.
    let p = compile(
        r#"{"rules":[{"name":"panics","effect":"allow","when":"'x' in request.query && request.query['x'].exists(c, c == 'a')"}]}"#,
    );
    assert!(decide(&p, &Req::new("GET", "/x")).is_allow());
    let decision = decide(&p, &Req::new("GET", "/x").query("x=abc"));
    assert!(
        matches!(&decision, Decision::Deny { rule, reason } if rule == "panics" && reason.starts_with(r#"rule "panics": expression failed: the evaluator failed"#)),
        "{decision:?}"
    );
}

#[test]
fn strict_index_on_literals() {
    let p = compile(
        r#"{"default":"deny","rules":[{"name":"ok","effect":"allow","when":"{'a': 1}['a'] == 1 && [1, 2][1] == 2 && {'a': {'b': true}}['a']['b']"}]}"#,
    );
    assert!(decide(&p, &Req::new("GET", "/x")).is_allow());
}

#[test]
fn compile_refuses_bad_expressions() {
    let cases = [
        (
            json!({"when": "request.method =="}),
            "invalid expression: syntax error",
        ),
        (
            json!({"when": "request.path.lowerAscii() == '/x'"}),
            "unknown function 'lowerAscii'",
        ),
        (json!({"when": "nosuch(1)"}), "unknown function 'nosuch'"),
        (json!({"when": "foo == 1"}), "undeclared reference to 'foo'"),
        (
            json!({"when": "request.nope == 1"}),
            "request has no field 'nope'",
        ),
        (json!({"when": "'yes'"}), "must evaluate to a bool"),
        (
            json!({"when": "request.hour + 1"}),
            "must evaluate to a bool",
        ),
        (json!({"when": "  "}), "expression is empty"),
        (
            json!({"when": "request.path.exists(c, c == 'x')"}),
            "the evaluator cannot run it",
        ),
    ];
    for (fields, expected) in cases {
        let message = refusal_of(fields.clone());
        assert!(message.starts_with(r#"rule "r": "#), "{fields}: {message}");
        assert!(message.contains(expected), "{fields}: {message}");
    }

    let message = refusal_of(json!({"when": "Foo{a: 1}.a == 1"}));
    assert!(message.contains("invalid expression"), "{message}");

    let long = format!("{}true", "true && ".repeat(600));
    assert!(refusal_of(json!({ "when": long })).contains("characters long"));
    let nested = format!("{}true{}", "(".repeat(40), ")".repeat(40));
    assert!(refusal_of(json!({ "when": nested })).contains("nested too deeply"));
    let chain = format!("{}1 == 101", "1 + ".repeat(100));
    assert!(refusal_of(json!({ "when": chain })).contains("nested too deeply"));

    let nested = "request.headers.exists(a, request.headers.exists(b, a != b))";
    assert!(refusal_of(json!({ "when": nested })).contains("cannot be nested"));
    let big = format!("request.hour in [{}]", ["1"; 300].join(", "));
    assert!(refusal_of(json!({ "when": big })).contains("more than 256 elements"));
    // One macro over another's result is fine (not nested).
    let p = compile(
        r#"{"default":"deny","rules":[{"name":"x","effect":"allow","when":"size(request.headers.filter(k, k.startsWith('x-'))) == 1 && request.headers.all(k, k != 'z')"}]}"#,
    );
    assert!(decide(&p, &Req::new("GET", "/x").header("x-a", "1")).is_allow());
    assert!(!decide(&p, &Req::new("GET", "/x")).is_allow());

    // `has` on an unknown field is merely false.
    let p = compile(
        r#"{"default":"deny","rules":[{"name":"h","effect":"allow","when":"!has(request.nope)"}]}"#,
    );
    assert!(decide(&p, &Req::new("GET", "/x")).is_allow());
}

#[test]
fn compile_refuses_bad_conditions() {
    let cases = [
        (json!({"paths": ["/a/[b"]}), r#"invalid path glob "/a/[b""#),
        (json!({"paths": ["/a**"]}), "whole path segment"),
        (json!({"paths": ["a/b"]}), "must start with '/'"),
        (
            json!({"hours": {"from": 9, "to": 9}}),
            "from and to must differ",
        ),
        (json!({"hours": {"from": 9, "to": 25}}), "hours are 0 to 24"),
        (json!({"days": ["funday"]}), r#"unknown day "funday""#),
        (json!({"methods": ["GE T"]}), r#"invalid method "GE T""#),
    ];
    for (fields, expected) in cases {
        let message = refusal_of(fields.clone());
        assert!(message.starts_with(r#"rule "r": "#), "{fields}: {message}");
        assert!(message.contains(expected), "{fields}: {message}");
    }
}

#[test]
fn compile_refuses_bad_names_and_sizes() {
    assert_eq!(
        refusal(r#"{"rules":[{"name":"a","effect":"deny"},{"name":"a","effect":"allow"}]}"#),
        r#"rule "a": duplicate name"#
    );
    assert_eq!(
        refusal(r#"{"rules":[{"name":"has space","effect":"deny"}]}"#),
        r#"rule #1: invalid name "has space": may contain only letters, digits, '_', '.' and '-'"#
    );
    assert!(refusal(r#"{"rules":[{"name":"","effect":"deny"}]}"#).contains("must be 1 to 64"));
    let long = json!({"rules": [{"name": "a".repeat(65), "effect": "deny"}]});
    assert!(refusal(&long.to_string()).contains("must be 1 to 64"));
    assert!(refusal(r#"{"rules":[{"name":"default","effect":"deny"}]}"#).contains("reserved"));

    let rules: Vec<serde_json::Value> = (0..65)
        .map(|i| json!({"name": format!("r{i}"), "effect": "deny"}))
        .collect();
    assert_eq!(
        refusal(&json!({ "rules": rules }).to_string()),
        "too many rules: 65 (at most 64)"
    );
}

#[test]
fn json_round_trip() {
    let policy = Policy::from_json(EXAMPLE).expect("parses");
    let compiled = policy.compile().expect("compiles");
    let text = serde_json::to_string(&policy).expect("serializes");
    assert_eq!(Policy::from_json(&text).expect("parses again"), policy);
    let value: serde_json::Value = serde_json::from_str(&text).expect("is json");
    assert_eq!(
        value["rules"][0],
        json!({"name": "no-deletes", "effect": "deny", "methods": ["DELETE"]})
    );
    assert_eq!(value["rules"][2]["hours"], json!({"from": 9, "to": 17}));
    assert_eq!(
        Policy::from_json("{}").expect("empty policy"),
        Policy::default()
    );

    // The example policy in action.
    assert_eq!(
        denied_by(&decide(&compiled, &Req::new("DELETE", "/x"))),
        Some("no-deletes")
    );
    assert_eq!(
        denied_by(&decide(&compiled, &Req::new("GET", "/admin/x"))),
        Some("admin-api")
    );
    assert!(decide(&compiled, &Req::new("GET", "/admin/x").role("admin")).is_allow());
    assert!(decide(&compiled, &Req::new("GET", "/x")).is_allow());
    // Saturday: office hours do not match and beta-header fails closed on the missing header.
    let saturday = Req::new("GET", "/x").at(time(MONDAY + 5 * DAY + 10 * HOUR));
    assert_eq!(
        denied_by(&decide(&compiled, &saturday)),
        Some("beta-header")
    );
    let beta = saturday.header("x-beta", "1").query("v=2");
    assert!(decide(&compiled, &beta).is_allow());
}

#[test]
fn unknown_fields_are_refused() {
    for text in [
        r#"{"rules":[],"extra":1}"#,
        r#"{"rules":[{"name":"a","effect":"deny","path":["/x"]}]}"#,
        r#"{"rules":[{"name":"a","effect":"deny","hours":{"from":1,"to":2,"tz":"utc"}}]}"#,
    ] {
        let err = Policy::from_json(text).expect_err("refused");
        assert!(
            matches!(&err, PolicyError::Json(m) if m.contains("unknown field")),
            "{text}: {err}"
        );
        assert!(
            err.to_string().starts_with("invalid policy json: "),
            "{err}"
        );
    }
    let err =
        Policy::from_json(r#"{"rules":[{"name":"a","effect":"maybe"}]}"#).expect_err("refused");
    assert!(
        matches!(&err, PolicyError::Json(m) if m.contains("unknown variant")),
        "{err}"
    );
    let err = Policy::from_json(r#"{"rules":[{"effect":"deny"}]}"#).expect_err("refused");
    assert!(
        matches!(&err, PolicyError::Json(m) if m.contains("missing field `name`")),
        "{err}"
    );
}

#[test]
fn empty_policies() {
    assert!(Policy::default().compile().expect("compiles").is_empty());
    assert!(compile("{}").is_empty());
    assert!(!compile(r#"{"default":"deny"}"#).is_empty());
    assert!(!compile(r#"{"rules":[{"name":"a","effect":"allow"}]}"#).is_empty());
}

#[test]
fn shared_across_threads() {
    let p = Arc::new(compile(EXAMPLE));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                (0..100).all(|_| {
                    let req = Req::new("GET", "/x").header("x-beta", "1").query("v=2");
                    p.evaluate(&req.facts()).is_allow()
                })
            })
        })
        .collect();
    for worker in workers {
        assert!(worker.join().expect("worker finishes"));
    }
}

#[test]
fn expressions_read_only_the_fields_they_name() {
    let mut regexes = Regexes::default();
    let e = compile_expression("request.caller.role == 'admin'", &mut regexes).expect("compiles");
    assert_eq!(e.needs, Field::Caller.bit());
    let e = compile_expression(
        "request.headers['x'] == '1' || request.method == 'GET'",
        &mut regexes,
    )
    .expect("compiles");
    assert_eq!(e.needs, Field::Headers.bit() | Field::Method.bit());
    let e = compile_expression("size(request) > 0", &mut regexes).expect("compiles");
    assert_eq!(e.needs, ALL_FIELDS);
}

#[test]
fn listed_functions_exist_in_the_interpreter() {
    let req = Req::new("GET", "/");
    let scope = request_scope(&ROOT, &req.facts(), &Clock::new(req.now), ALL_FIELDS);
    for name in FUNCTIONS {
        let ast = cel_parser::Parser::default()
            .parse(&format!("{name}()"))
            .expect("parses");
        let outcome = run(&ast, &scope);
        assert!(
            !matches!(
                outcome,
                Outcome::Failed {
                    undeclared: true,
                    ..
                }
            ),
            "{name} is not a function of the interpreter"
        );
    }
    let ast = cel_parser::Parser::default()
        .parse("nosuch()")
        .expect("parses");
    assert!(matches!(
        run(&ast, &scope),
        Outcome::Failed {
            undeclared: true,
            ..
        }
    ));
}

/// A policy that allows when header `x-value` matches `pattern`, and denies by default.
fn matching(pattern: &str) -> CompiledPolicy {
    let when =
        format!("'x-value' in request.headers && request.headers['x-value'].matches('{pattern}')");
    compile(
        &json!({"default": "deny", "rules": [{"name": "m", "effect": "allow", "when": when}]})
            .to_string(),
    )
}

/// A request with header `x-value`.
fn with_value(value: &str) -> Req {
    let mut req = Req::new("GET", "/x");
    req.headers.append(
        HeaderName::from_static("x-value"),
        HeaderValue::from_str(value).expect("a valid header value"),
    );
    req
}

#[test]
fn matches_in_both_forms() {
    let p = compile(
        r#"{"default":"deny","rules":[
            {"name":"method-form","effect":"allow","when":"request.path.matches('^/v[0-9]+/')"},
            {"name":"function-form","effect":"allow","when":"matches(request.method, '^(GET|HEAD)$')"}
        ]}"#,
    );
    assert!(decide(&p, &Req::new("POST", "/v2/items")).is_allow());
    assert!(decide(&p, &Req::new("HEAD", "/web")).is_allow());
    assert_eq!(
        denied_by(&decide(&p, &Req::new("POST", "/web"))),
        Some("default")
    );
    assert_eq!(p.regexes.by_pattern.len(), 2);
    assert!(p.functions.is_some());
    // A policy without patterns shares the root functions.
    assert!(compile(EXAMPLE).functions.is_none());

    let p = matching("^[a-z]+-[0-9]{1,4}$");
    assert!(decide(&p, &with_value("tenant-42")).is_allow());
    assert!(!decide(&p, &with_value("tenant-42x")).is_allow());
}

#[test]
fn matches_needs_a_literal_pattern() {
    for when in [
        "request.path.matches(request.headers['x-pattern'])",
        "matches(request.path, '^/a' + 'b')",
        "request.headers.exists(k, k.matches(k))",
        "request.path.matches(b'^/a')",
    ] {
        let message = refusal_of(json!({ "when": when }));
        assert!(
            message.starts_with(r#"rule "r": invalid expression: "#)
                && message.contains("matches() needs a literal pattern"),
            "{when}: {message}"
        );
    }
    for when in ["request.path.matches()", "matches(request.path)"] {
        let message = refusal_of(json!({ "when": when }));
        assert!(
            message.contains("matches() takes a string and a pattern"),
            "{when}: {message}"
        );
    }
    let message = refusal_of(json!({"when": "request.path.matches('(a')"}));
    assert!(
        message.ends_with(r#"invalid matches() pattern "(a": unclosed group"#),
        "{message}"
    );
}

#[test]
fn matches_refuses_oversized_patterns() {
    // Small to write, a million states once compiled.
    let message = refusal_of(json!({"when": "request.path.matches('(a{1000}){1000}')"}));
    assert!(
        message.starts_with(
            r#"rule "r": invalid expression: matches() pattern "(a{1000}){1000}" is too big once compiled (over 65536 bytes)"#
        ),
        "{message}"
    );

    // Longer than MAX_PATTERN_BYTES (the expression itself is within its limit).
    let long = format!(
        "({})",
        (0..300)
            .map(|i| format!("a{i}"))
            .collect::<Vec<_>>()
            .join("|")
    );
    assert!(long.len() > MAX_PATTERN_BYTES);
    let message = refusal_of(json!({ "when": format!("request.path.matches('{long}')") }));
    assert!(
        message.contains(&format!(
            "matches() pattern is {} bytes long (at most 1024)",
            long.len()
        )),
        "{message}"
    );

    // At most MAX_PATTERNS distinct patterns per policy; a repeated one counts once.
    let rule = |name: &str, patterns: std::ops::Range<usize>| {
        let calls: Vec<String> = patterns
            .map(|i| format!("request.path.matches('^/p{i}$')"))
            .collect();
        json!({"name": name, "effect": "deny", "when": calls.join(" || ")})
    };
    let full: Vec<_> = (0..4)
        .map(|r| rule(&format!("r{r}"), r * 16..r * 16 + 16))
        .collect();
    let p = compile(&json!({ "rules": full }).to_string());
    assert_eq!(p.regexes.by_pattern.len(), MAX_PATTERNS);
    assert_eq!(denied_by(&decide(&p, &Req::new("GET", "/p63"))), Some("r3"));
    let mut again = full.clone();
    again.push(rule("again", 0..16));
    let p = compile(&json!({ "rules": again }).to_string());
    assert_eq!(p.regexes.by_pattern.len(), MAX_PATTERNS);
    let mut over = full;
    over.push(rule("over", 64..65));
    let message = refusal(&json!({ "rules": over }).to_string());
    assert_eq!(
        message,
        r#"rule "over": invalid expression: too many matches() patterns (at most 64 distinct ones per policy)"#
    );
}

#[test]
fn hostile_patterns_match_in_bounded_time() {
    // Patterns that take a backtracking engine exponential time, on 8 KiB values. The regex
    // crate runs in time linear in the value; 1 ms per evaluation is generous, so that a
    // loaded machine does not fail the test.
    let many_a = "a".repeat(8 << 10);
    let cases = [
        ("(a|aa)*b", many_a.clone(), false),
        ("(a|aa)*b", format!("{many_a}b"), true),
        ("^(a+)+$", format!("{many_a}!"), false),
        ("^([a-z]+ ?)*$", format!("{many_a}!"), false),
    ];
    for (pattern, value, expected) in cases {
        let p = matching(pattern);
        let req = with_value(&value);
        let start = Instant::now();
        for _ in 0..1_000 {
            assert_eq!(decide(&p, &req).is_allow(), expected, "{pattern}");
        }
        let mean = start.elapsed() / 1_000;
        assert!(
            mean < Duration::from_millis(1),
            "{pattern}: {mean:?} per evaluation"
        );
    }
}

#[test]
fn patterns_are_compiled_once_with_the_policy() {
    const EMAIL: &str = "^[a-z0-9._%+-]{1,32}@[a-z0-9-]{1,32}([.][a-z0-9-]{1,16}){1,4}$";
    // Two rules, one pattern: compiled once, when the policy is.
    let p = compile(
        &json!({"default": "deny", "rules": [
            {"name": "malformed", "effect": "deny",
             "when": format!("'x-email' in request.headers && !request.headers['x-email'].matches('{EMAIL}')")},
            {"name": "well-formed", "effect": "allow",
             "when": format!("matches(request.headers['x-email'], '{EMAIL}')")},
        ]})
        .to_string(),
    );
    assert_eq!(p.regexes.by_pattern.len(), 1);
    let req = Req::new("GET", "/x").header("x-email", "someone@example.com");
    let before = p.regexes.lookups.load(Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..10_000 {
        assert!(decide(&p, &req).is_allow());
    }
    let evaluating = start.elapsed();
    // Both calls of every evaluation went to the precompiled regex.
    assert_eq!(p.regexes.lookups.load(Ordering::Relaxed) - before, 20_000);
    // Compiling at each evaluation would cost at least this much.
    let start = Instant::now();
    for _ in 0..100 {
        compile_regex(EMAIL).expect("compiles");
    }
    let compiling = start.elapsed() * 100;
    assert!(
        evaluating < compiling,
        "10,000 evaluations took {evaluating:?}, 10,000 compilations about {compiling:?}"
    );

    // Even the shared functions never compile: a pattern not compiled with the policy fails.
    let req = Req::new("GET", "/");
    let scope = request_scope(&ROOT, &req.facts(), &Clock::new(req.now), ALL_FIELDS);
    let ast = cel_parser::Parser::default()
        .parse("'abc'.matches('a')")
        .expect("parses");
    assert!(matches!(
        run(&ast, &scope),
        Outcome::Failed { message, .. } if message.contains("was not compiled with the policy")
    ));
}

#[test]
fn clock_reads_utc() {
    let monday = Clock::new(time(MONDAY + 10 * HOUR + 59));
    assert_eq!((monday.weekday, monday.hour), (0, 10));
    let sunday = Clock::new(time(MONDAY + 6 * DAY + 23 * HOUR));
    assert_eq!((sunday.weekday, sunday.hour), (6, 23));
    // Before the epoch: 1969-12-31T23:00:00Z was a Wednesday.
    let before = Clock::new(UNIX_EPOCH - Duration::from_secs(HOUR));
    assert_eq!((before.weekday, before.hour), (2, 23));
}

#[test]
fn a_manifest_policy_is_parsed_strictly_from_the_file() {
    // No policy, or null: none.
    assert_eq!(Policy::from_manifest(br#"{"name":"hello"}"#), Ok(None));
    assert_eq!(Policy::from_manifest(br#"{"policy":null}"#), Ok(None));
    let ok = br#"{"policy":{"rules":[{"name":"no-patch","effect":"deny","methods":["PATCH"]}]}}"#;
    assert!(matches!(Policy::from_manifest(ok), Ok(Some(p)) if p.rules.len() == 1));
    // A duplicate key would otherwise let the last one win (here: no rules at all).
    let twice = br#"{"policy":{"rules":[{"name":"d","effect":"deny"}],"rules":[]}}"#;
    let err = Policy::from_manifest(twice).expect_err("duplicate key");
    assert!(
        err.contains("duplicate field") && err.contains("line 1"),
        "{err}"
    );
    // Shape errors point into the file; rules that do not compile say why.
    let typo = b"{\n  \"policy\": {\"rulez\": []}\n}";
    let err = Policy::from_manifest(typo).expect_err("unknown field");
    assert!(
        err.starts_with("manifest.json is not valid") && err.contains("line 2"),
        "{err}"
    );
    let bad_cel = br#"{"policy":{"rules":[{"name":"b","effect":"deny","when":"1 +"}]}}"#;
    let err = Policy::from_manifest(bad_cel).expect_err("bad expression");
    assert!(err.starts_with("policy: "), "{err}");
}
