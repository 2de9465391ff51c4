//! Tool parameters (JSON Schema) → Gemini's function declarations.
//!
//! Gemini has two ways to declare parameters: `parameters`, an OpenAPI
//! subset every Gemini model takes, and `parametersJsonSchema`, JSON Schema
//! itself. A schema is written in the subset when it can be:
//!
//! - Local references (`$ref: "#/$defs/Name"`, `#/definitions/…` or any
//!   other pointer into the same schema, as Pydantic and zod write nested
//!   models) are inlined, and `$defs` / `definitions` dropped: the subset
//!   has no references, and refuses or misreads them.
//! - Keywords are mapped to the subset's fields (`oneOf` → `anyOf`, a
//!   one-schema `allOf` merged, `const` → `enum`, `exclusiveMinimum` →
//!   `minimum`, `examples` → `example`, a type list → `type` + `nullable` or
//!   `anyOf`); annotations and constraints it has no field for
//!   (`additionalProperties: false`, `$schema`, `uniqueItems`, formats it
//!   does not know, …) are dropped.
//! - An object with no properties (a tool without parameters) is sent as no
//!   `parameters` at all, which Gemini requires.
//!
//! What the subset cannot say (a free-form object or a map, such as
//! Pydantic's `dict`; a recursive model; a tuple; `not`, `if`/`then`; or
//! references that would expand too far) goes as `parametersJsonSchema`,
//! unchanged but for `$schema`. A remote or dangling reference is refused,
//! naming the tool.

use serde_json::{json, Map, Value};

/// Parameters as Gemini takes them.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Parameters {
    /// In the OpenAPI subset: `parameters`.
    Subset(Value),
    /// As JSON Schema: `parametersJsonSchema`.
    JsonSchema(Value),
}

/// Most references being inlined inside one another.
const MAX_OPEN_REFS: usize = 32;
/// Deepest schema written in the subset.
const MAX_DEPTH: usize = 64;
/// Fewest JSON values inlining may produce; the limit is four times the
/// input's size when that is more (references reused at many depths can
/// grow a schema exponentially).
const MIN_INLINED_VALUES: usize = 20_000;

/// Why a schema is not written in the subset.
enum NotSubset {
    /// It cannot be: send it as JSON Schema.
    Inexpressible,
    /// It is wrong: refuse the request.
    Invalid(String),
}

/// Gemini's parameters for `schema`; `None` for a tool without any.
pub(super) fn parameters(schema: &Value) -> Result<Option<Parameters>, String> {
    let mut inliner = Inliner {
        root: schema,
        open: Vec::new(),
        budget: MIN_INLINED_VALUES.max(4 * weight(schema)),
    };
    let subset = inliner
        .inline(schema, 0)
        .and_then(|inlined| match takes_no_arguments(&inlined) {
            true => Ok(None),
            false => subset(inlined).and_then(|s| match s.get("type") {
                // Gemini declares parameters as an object.
                Some(t) if t == "object" => Ok(Some(s)),
                _ => Err(NotSubset::Inexpressible),
            }),
        });
    match subset {
        Ok(subset) => Ok(subset.map(Parameters::Subset)),
        Err(NotSubset::Invalid(why)) => Err(why),
        Err(NotSubset::Inexpressible) => {
            let mut schema = schema.clone();
            if let Some(map) = schema.as_object_mut() {
                map.shift_remove("$schema");
            }
            Ok(Some(Parameters::JsonSchema(schema)))
        }
    }
}

/// How many JSON values `value` holds (itself included).
fn weight(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(weight).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(weight).sum::<usize>(),
        _ => 1,
    }
}

struct Inliner<'a> {
    root: &'a Value,
    /// The references being inlined around the current node.
    open: Vec<&'a str>,
    /// JSON values the output may still hold.
    budget: usize,
}

impl<'a> Inliner<'a> {
    /// Takes `n` values from the budget.
    fn spend(&mut self, n: usize) -> Result<(), NotSubset> {
        self.budget = self.budget.checked_sub(n).ok_or(NotSubset::Inexpressible)?;
        Ok(())
    }

    /// The schema `node` with every `$ref` replaced by what it points at.
    /// Only sub-schemas are walked: values such as `enum`, `default` or
    /// `example` are data, and a property may be named `$ref`.
    fn inline(&mut self, node: &'a Value, depth: usize) -> Result<Value, NotSubset> {
        if depth > MAX_DEPTH {
            return Err(NotSubset::Inexpressible);
        }
        self.spend(1)?;
        let Value::Object(map) = node else {
            return Ok(node.clone());
        };
        let mut out = match map.get("$ref") {
            None => Map::new(),
            Some(reference) => {
                let reference = reference
                    .as_str()
                    .ok_or_else(|| NotSubset::Invalid("a $ref that is not a string".to_owned()))?;
                // A recursive model cannot be written out; a long chain of
                // references is not worth it.
                if self.open.contains(&reference) || self.open.len() >= MAX_OPEN_REFS {
                    return Err(NotSubset::Inexpressible);
                }
                let target = resolve(self.root, reference).map_err(NotSubset::Invalid)?;
                self.open.push(reference);
                let inlined = self.inline(target, depth + 1)?;
                self.open.pop();
                match inlined {
                    Value::Object(target) => target,
                    _ => return Err(NotSubset::Inexpressible),
                }
            }
        };
        // Keywords beside a reference (`description`, `default`, …) describe
        // this use of it: they win over the target's.
        for (key, value) in map {
            let value = match (key.as_str(), value) {
                ("$ref" | "$defs" | "definitions", _) => continue,
                (
                    "properties" | "patternProperties" | "dependentSchemas",
                    Value::Object(schemas),
                ) => {
                    let mut out = Map::new();
                    for (name, sub) in schemas {
                        out.insert(name.clone(), self.inline(sub, depth + 1)?);
                    }
                    Value::Object(out)
                }
                ("anyOf" | "oneOf" | "allOf" | "prefixItems" | "items", Value::Array(schemas)) => {
                    let mut out = Vec::with_capacity(schemas.len());
                    for sub in schemas {
                        out.push(self.inline(sub, depth + 1)?);
                    }
                    Value::Array(out)
                }
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
                ) => self.inline(sub, depth + 1)?,
                (_, data) => {
                    self.spend(weight(data))?;
                    data.clone()
                }
            };
            out.insert(key.clone(), value);
        }
        Ok(Value::Object(out))
    }
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
    let constrained = ["anyOf", "oneOf", "allOf", "items", "patternProperties"]
        .iter()
        .any(|k| map.contains_key(*k))
        || map.get("additionalProperties").is_some_and(is_constraining);
    map.get("type").is_none_or(|t| t == "object") && no_properties && !constrained
}

/// Fields of Gemini's `Schema` that carry data, copied as they are.
const DATA_FIELDS: [&str; 17] = [
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "propertyOrdering",
    "default",
    "minimum",
    "maximum",
];

/// `format` values Gemini's `Schema` knows.
const FORMATS: [&str; 6] = ["enum", "date-time", "float", "double", "int32", "int64"];

/// The inlined schema `node` in Gemini's subset.
fn subset(node: Value) -> Result<Value, NotSubset> {
    let Value::Object(mut map) = node else {
        // (`true`, `false`: a schema allowing anything or nothing.)
        return Err(NotSubset::Inexpressible);
    };
    // A one-schema `allOf` (how Pydantic and zod wrap a reference that has
    // a description beside it) is that schema; the node's own keys win.
    // (Merged until none is left: the schema may have its own.)
    while let Some(all) = map.shift_remove("allOf") {
        match <[Value; 1]>::try_from(all.as_array().cloned().unwrap_or_default()) {
            Ok([Value::Object(only)]) => {
                for (k, v) in only {
                    map.entry(k).or_insert(v);
                }
            }
            _ => return Err(NotSubset::Inexpressible),
        }
    }
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "type" => write_type(&mut out, value)?,
            "properties" => {
                let Value::Object(properties) = value else {
                    return Err(NotSubset::Invalid(
                        "'properties' is not an object".to_owned(),
                    ));
                };
                let mut written = Map::new();
                for (name, sub) in properties {
                    written.insert(name, subset(sub)?);
                }
                out.insert(key, Value::Object(written));
            }
            "items" if value.is_object() => {
                out.insert(key, subset(value)?);
            }
            "anyOf" | "oneOf" => {
                let Value::Array(options) = value else {
                    return Err(NotSubset::Invalid(format!("'{key}' is not a list")));
                };
                let mut written = Vec::with_capacity(options.len());
                for option in options {
                    if is_null_schema(&option) {
                        out.insert("nullable".to_owned(), Value::Bool(true));
                    } else {
                        written.push(subset(option)?);
                    }
                }
                out.insert("anyOf".to_owned(), Value::Array(written));
            }
            "const" => write_enum(&mut out, vec![value])?,
            "enum" => {
                let Value::Array(values) = value else {
                    return Err(NotSubset::Invalid("'enum' is not a list".to_owned()));
                };
                write_enum(&mut out, values)?;
            }
            "exclusiveMinimum" if value.is_number() => {
                out.entry("minimum").or_insert(value);
            }
            "exclusiveMaximum" if value.is_number() => {
                out.entry("maximum").or_insert(value);
            }
            "examples" => {
                if let Some(first) = value.as_array().and_then(|e| e.first()) {
                    out.entry("example").or_insert_with(|| first.clone());
                }
            }
            "format" if value.as_str().is_some_and(|f| FORMATS.contains(&f)) => {
                out.insert(key, value);
            }
            "format" => {}
            // A map (`additionalProperties` as a schema), a tuple, or a
            // constraint the subset cannot state.
            "additionalProperties" if is_constraining(&value) => {
                return Err(NotSubset::Inexpressible)
            }
            "items"
            | "prefixItems"
            | "patternProperties"
            | "not"
            | "if"
            | "then"
            | "else"
            | "dependentSchemas"
            | "contains"
            | "propertyNames"
            | "unevaluatedProperties" => return Err(NotSubset::Inexpressible),
            field if DATA_FIELDS.contains(&field) => {
                out.insert(key, value);
            }
            // Annotations and constraints without a field: `$schema`,
            // `$id`, `$comment`, `additionalProperties: bool`,
            // `uniqueItems`, `multipleOf`, `deprecated`, `readOnly`, …
            _ => {}
        }
    }
    fold_null_option(&mut out);
    // A schema allowing anything (`{}`, `items: {}` of `list[Any]`) has no
    // type to give Gemini.
    if !["type", "anyOf", "enum"]
        .iter()
        .any(|k| out.contains_key(*k))
    {
        return Err(NotSubset::Inexpressible);
    }
    // A free-form object (no properties) below the top cannot be written.
    let object = out.get("type").is_some_and(|t| t == "object");
    let no_properties = out
        .get("properties")
        .is_none_or(|p| p.as_object().is_none_or(Map::is_empty));
    if object && no_properties && !out.contains_key("anyOf") {
        return Err(NotSubset::Inexpressible);
    }
    Ok(Value::Object(out))
}

/// Whether `additionalProperties` says something the subset cannot: a
/// schema for the extra keys (a map). `true`, `false` and `{}` (anything)
/// are dropped.
fn is_constraining(additional: &Value) -> bool {
    additional.as_object().is_some_and(|m| !m.is_empty())
}

/// An `enum` (or `const`) in the subset, whose enums hold strings: a `null`
/// value is `nullable`, a string enum without a type gets `type: string`,
/// and any other value cannot be written.
fn write_enum(out: &mut Map<String, Value>, values: Vec<Value>) -> Result<(), NotSubset> {
    let mut strings = Vec::with_capacity(values.len());
    for value in values {
        match value {
            Value::Null => {
                out.insert("nullable".to_owned(), Value::Bool(true));
            }
            Value::String(_) => strings.push(value),
            _ => return Err(NotSubset::Inexpressible),
        }
    }
    out.entry("type")
        .or_insert_with(|| Value::String("string".to_owned()));
    out.insert("enum".to_owned(), Value::Array(strings));
    Ok(())
}

/// `anyOf: [X, {"type": "null"}]` (how Pydantic writes `Optional[X]`) is
/// X, `nullable`: the null option is dropped as the `anyOf` is written
/// (setting `nullable`), and a single option left is merged into the
/// schema here (whose own keys, such as its description, win).
fn fold_null_option(out: &mut Map<String, Value>) {
    let single = match out.get("anyOf") {
        Some(Value::Array(options)) if options.is_empty() => {
            out.shift_remove("anyOf");
            return;
        }
        Some(Value::Array(options)) => options.len() == 1 && !out.contains_key("type"),
        _ => false,
    };
    if !single {
        return;
    }
    if let Some(Value::Array(mut options)) = out.shift_remove("anyOf") {
        if let Some(Value::Object(only)) = options.pop() {
            for (k, v) in only {
                out.entry(k).or_insert(v);
            }
        }
    }
}

/// A JSON Schema allowing only `null`.
fn is_null_schema(schema: &Value) -> bool {
    schema.as_object().is_some_and(|m| {
        let null = match m.get("type") {
            Some(Value::String(t)) => t == "null",
            Some(Value::Array(types)) => types.iter().all(|t| t == "null") && !types.is_empty(),
            _ => false,
        };
        null && m
            .keys()
            .all(|k| matches!(k.as_str(), "type" | "title" | "description"))
    })
}

/// JSON Schema's `type` in the subset: one type as it is; a list (OpenAI's
/// strict mode writes optional fields as `["string", "null"]`) as `type` +
/// `nullable`, several types as `anyOf` one schema each.
fn write_type(out: &mut Map<String, Value>, value: Value) -> Result<(), NotSubset> {
    let types = match value {
        Value::String(t) if t == "null" => Vec::new(),
        Value::String(_) => {
            out.insert("type".to_owned(), value);
            return Ok(());
        }
        Value::Array(types) => types,
        _ => {
            return Err(NotSubset::Invalid(
                "'type' is not a name or a list".to_owned(),
            ))
        }
    };
    let nullable = types.is_empty() || types.iter().any(|t| t == "null");
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
    Ok(())
}
