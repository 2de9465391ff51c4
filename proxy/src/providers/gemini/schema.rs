//! Tool parameters (JSON Schema) → Gemini's `functionDeclarations[].parameters`,
//! an OpenAPI subset:
//!
//! - Local references (`$ref: "#/$defs/Name"`, `#/definitions/…` or any
//!   other pointer into the same schema, as Pydantic and zod write nested
//!   models) are inlined, and `$defs` / `definitions` dropped: Gemini's
//!   subset has no references, and refuses or misreads them. A recursive or
//!   remote reference cannot be inlined and is refused, naming the tool.
//! - Keywords it rejects (`$schema`, `additionalProperties`) are dropped
//!   from every sub-schema, property names left alone.
//! - A list of types is written its way (`type` + `nullable`, or `anyOf`).
//! - An object with no properties (a tool without parameters) is sent as no
//!   `parameters` at all, which Gemini requires.

use serde_json::{json, Map, Value};

/// Most schema nodes inlining may produce: references reused at many
/// depths can grow a schema exponentially.
const MAX_INLINED_NODES: usize = 20_000;

/// `parameters` as Gemini takes them; `None` for a tool without any.
pub(super) fn parameters(schema: &Value) -> Result<Option<Value>, String> {
    let mut budget = MAX_INLINED_NODES;
    let inlined = inline(schema, schema, &mut Vec::new(), &mut budget)?;
    Ok((!takes_no_arguments(&inlined)).then(|| gemini_schema(inlined)))
}

/// The schema `node` with every `$ref` replaced by what it points at in
/// `root`; `expanding` holds the references being inlined around `node`.
/// Only sub-schemas are walked: values such as `enum`, `default` or
/// `example` are data, and a property may be named `$ref`.
fn inline(
    node: &Value,
    root: &Value,
    expanding: &mut Vec<String>,
    budget: &mut usize,
) -> Result<Value, String> {
    *budget = budget
        .checked_sub(1)
        .ok_or("its references expand to too large a schema")?;
    let Value::Object(map) = node else {
        return Ok(node.clone());
    };
    let mut out = match map.get("$ref") {
        None => Map::new(),
        Some(reference) => {
            let reference = reference
                .as_str()
                .ok_or("a $ref that is not a string")?
                .to_owned();
            if expanding.contains(&reference) {
                return Err(format!(
                    "the recursive reference '{reference}' cannot be written without references"
                ));
            }
            let target = resolve(root, &reference)?;
            expanding.push(reference);
            let inlined = inline(target, root, expanding, budget)?;
            expanding.pop();
            match inlined {
                Value::Object(target) => target,
                other => return Err(format!("a $ref to a non-schema value ({other})")),
            }
        }
    };
    // Keywords beside a reference (`description`, `default`, …) describe
    // this use of it: they win over the target's.
    for (key, value) in map {
        let value = match (key.as_str(), value) {
            ("$ref" | "$defs" | "definitions", _) => continue,
            ("properties" | "patternProperties" | "dependentSchemas", Value::Object(schemas)) => {
                Value::Object(
                    schemas
                        .iter()
                        .map(|(name, sub)| {
                            Ok((name.clone(), inline(sub, root, expanding, budget)?))
                        })
                        .collect::<Result<Map<_, _>, String>>()?,
                )
            }
            ("anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(schemas)) => Value::Array(
                schemas
                    .iter()
                    .map(|sub| inline(sub, root, expanding, budget))
                    .collect::<Result<_, _>>()?,
            ),
            (
                "items"
                | "additionalProperties"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contains"
                | "propertyNames",
                sub,
            ) => inline(sub, root, expanding, budget)?,
            (_, data) => data.clone(),
        };
        out.insert(key.clone(), value);
    }
    Ok(Value::Object(out))
}

/// What the local JSON pointer `reference` (`#/…`) names in `root`.
fn resolve<'a>(root: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let pointer = reference
        .strip_prefix('#')
        .ok_or_else(|| format!("the reference '{reference}' is not local to the schema"))?;
    // (`pointer` unescapes `~1` and `~0` itself; an empty pointer is the root.)
    let pointer = percent_decoded(pointer);
    root.pointer(&pointer)
        .ok_or_else(|| format!("the reference '{reference}' points at nothing"))
}

/// A URI fragment's `%XX` escapes decoded (JSON pointers in `$ref` are URI
/// fragments: a name with a space is written `%20`).
fn percent_decoded(fragment: &str) -> String {
    let bytes = fragment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| fragment.to_owned())
}

/// An object schema with no properties (a tool without parameters): Gemini
/// refuses it ("properties: should be non-empty for OBJECT type"), so the
/// declaration goes without `parameters`.
fn takes_no_arguments(schema: &Value) -> bool {
    let Value::Object(map) = schema else {
        return false;
    };
    let no_properties = map
        .get("properties")
        .is_none_or(|p| p.as_object().is_some_and(Map::is_empty));
    let constrained = ["anyOf", "oneOf", "allOf", "items"]
        .iter()
        .any(|k| map.contains_key(*k))
        || map
            .get("additionalProperties")
            .is_some_and(Value::is_object);
    map.get("type").is_none_or(|t| t == "object") && no_properties && !constrained
}

/// Gemini's schema is an OpenAPI subset: drop the JSON Schema keywords it
/// rejects (`$schema`, `additionalProperties`) from every sub-schema, leaving
/// property names alone, and write a list of types its way.
fn gemini_schema(schema: Value) -> Value {
    let Value::Object(map) = schema else {
        return schema;
    };
    let mut out: Map<String, Value> = map
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "$schema" | "additionalProperties"))
        .map(|(k, v)| {
            let v = match (k.as_str(), v) {
                ("properties", Value::Object(props)) => Value::Object(
                    props
                        .into_iter()
                        .map(|(name, sub)| (name, gemini_schema(sub)))
                        .collect::<Map<String, Value>>(),
                ),
                ("anyOf" | "oneOf" | "allOf", Value::Array(list)) => {
                    Value::Array(list.into_iter().map(gemini_schema).collect())
                }
                ("items", sub) => gemini_schema(sub),
                (_, other) => other,
            };
            (k, v)
        })
        .collect();
    // JSON Schema's `"type": ["string", "null"]` (OpenAI's strict mode writes
    // optional fields so) is `"type": "string", "nullable": true` in Gemini's;
    // several types are `anyOf` one schema each.
    let listed = out.get("type").is_some_and(Value::is_array);
    if let Some(Value::Array(types)) = listed.then(|| out.shift_remove("type")).flatten() {
        let nullable = types.iter().any(|t| t == "null");
        let mut named: Vec<Value> = types.into_iter().filter(|t| t != "null").collect();
        match named.len() {
            0 => {}
            1 => {
                out.insert("type".to_owned(), named.remove(0));
            }
            _ => {
                let any_of = named.into_iter().map(|t| json!({ "type": t })).collect();
                out.insert("anyOf".to_owned(), Value::Array(any_of));
            }
        }
        if nullable {
            out.insert("nullable".to_owned(), Value::Bool(true));
        }
    }
    out.into()
}
