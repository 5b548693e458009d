//! Go's `encoding/json` as `gojson` reads it: no panic, no deep stack, the
//! first value of a stream is the whole document when there is nothing
//! after it, and whatever serde_json accepts (a subset: it refuses invalid
//! UTF-8, lone surrogates and nesting past 128) Go accepts too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::gojson::{self, Value};

fn kind(v: &Value) -> &'static str {
    v.kind()
}

fuzz_target!(|data: &[u8]| {
    let whole = gojson::parse(data);
    let first = gojson::parse_first(data);
    if let Ok(v) = &whole {
        match &first {
            Ok(Some(f)) => assert_eq!(f, v, "the first value of a whole document is the document"),
            other => panic!("parse accepted, parse_first gave {other:?}"),
        }
    }
    if let Err(e) = &whole {
        let _ = e.to_string();
    }
    if let Ok(serde) = serde_json::from_slice::<serde_json::Value>(data) {
        let go = whole
            .as_ref()
            .unwrap_or_else(|e| panic!("serde_json accepted, Go's reader refused: {e}"));
        let expected = match serde {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "bool",
            serde_json::Value::Number(_) => "number",
            serde_json::Value::String(_) => "string",
            serde_json::Value::Array(_) => "array",
            serde_json::Value::Object(_) => "object",
        };
        assert_eq!(kind(go), expected);
    }
    let _ = gojson::go_quote(data);
});
