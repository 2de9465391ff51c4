//! Request translation: what `prepare_upstream` sends to each provider.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use tollgate_proxy::providers::{
    parse_request, prepare_upstream, route, BaseUrls, CustomProvider, PrepareError, ProviderKey,
    UpstreamRequest,
};

fn prepare(body: Value, cap: Option<u64>) -> Result<UpstreamRequest, PrepareError> {
    let request = parse_request(body.to_string().as_bytes()).unwrap();
    let custom = [CustomProvider {
        name: "together".to_owned(),
        base_url: "https://api.together.xyz/v1".to_owned(),
    }];
    let route = route(&request.model, &custom, &BaseUrls::default()).unwrap();
    prepare_upstream(&route, &request, &ProviderKey::new("sk-secret-123"), cap)
}

fn body_of(up: &UpstreamRequest) -> Value {
    serde_json::from_slice(&up.body).unwrap()
}

fn header<'a>(up: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
    up.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A conversation using every role, a tool round trip and a stop list.
fn conversation(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"},
            {"role": "user", "content": "Thanks!"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}}],
        "tool_choice": "auto",
        "stop": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 300,
        "user": "user-42",
        "seed": 7
    })
}

#[test]
fn anthropic_request() {
    let up = prepare(conversation("claude-3-5-sonnet-20240620"), Some(200)).unwrap();
    assert_eq!(up.url, "https://api.anthropic.com/v1/messages");
    assert_eq!(header(&up, "x-api-key"), Some("sk-secret-123"));
    assert_eq!(header(&up, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(header(&up, "authorization"), None);
    assert_eq!(up.max_output_tokens, Some(200));
    assert_eq!(
        body_of(&up),
        json!({
            "model": "claude-3-5-sonnet-20240620",
            "max_tokens": 200,
            "system": "Be brief.\n\nAnswer in French.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "{\"temp_c\": 21}"},
                    {"type": "text", "text": "Thanks!"}]}
            ],
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "tools": [{"name": "get_weather", "description": "Weather now",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}],
            "tool_choice": {"type": "auto"},
            "metadata": {"user_id": "user-42"}
        })
    );
}

#[test]
fn anthropic_max_tokens_sources_and_stream() {
    let base = |extra: Value| {
        let mut b =
            json!({"model": "anthropic/claude-x", "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let sent = |b: Value, cap| body_of(&prepare(b, cap).unwrap())["max_tokens"].clone();
    assert_eq!(sent(base(json!({})), None), json!(4096));
    assert_eq!(sent(base(json!({})), Some(1000)), json!(1000));
    assert_eq!(
        sent(base(json!({"max_completion_tokens": 50})), Some(1000)),
        json!(50)
    );
    assert_eq!(
        sent(base(json!({"max_tokens": 5000})), Some(1000)),
        json!(1000)
    );
    let up = prepare(base(json!({"stream": true, "stop": "x"})), None).unwrap();
    assert!(up.stream);
    assert_eq!(body_of(&up)["model"], "claude-x");
    assert_eq!(body_of(&up)["stream"], true);
    assert_eq!(body_of(&up)["stop_sequences"], json!(["x"]));
    assert!(matches!(
        prepare(base(json!({"n": 2})), None),
        Err(PrepareError::Unsupported { .. })
    ));
}

#[test]
fn gemini_request() {
    let up = prepare(conversation("gemini-2.0-flash"), None).unwrap();
    assert_eq!(
        up.url,
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
    );
    assert_eq!(header(&up, "x-goog-api-key"), Some("sk-secret-123"));
    assert_eq!(up.max_output_tokens, Some(300));
    assert_eq!(
        body_of(&up),
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                    {"text": "Thanks!"}]}
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
            "generationConfig": {"maxOutputTokens": 300, "stopSequences": ["END"], "temperature": 0.5, "topP": 0.9},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}
        })
    );
    let stream = prepare(
        json!({"model": "gemini/gemini-2.5-pro", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}),
        None,
    )
    .unwrap();
    assert_eq!(stream.url, "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse");
    assert_eq!(
        body_of(&stream),
        json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    );
    let bad = prepare(
        json!({"model": "gemini/../x", "messages": [{"role": "user", "content": "hi"}]}),
        None,
    );
    assert!(matches!(bad, Err(PrepareError::InvalidField { .. })));
}

#[test]
fn anthropic_sampling_fits_its_ranges() {
    let sampling = |extra: Value| {
        let mut body =
            json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let sent = body_of(&prepare(body, None).unwrap());
        (sent.get("temperature").cloned(), sent.get("top_p").cloned())
    };
    // OpenAI's range is 0–2, Anthropic's 0–1.
    assert_eq!(
        sampling(json!({"temperature": 1.7})),
        (Some(json!(1.0)), None)
    );
    // Current models refuse both: the temperature wins.
    assert_eq!(
        sampling(json!({"temperature": 0.2, "top_p": 0.5})),
        (Some(json!(0.2)), None)
    );
    assert_eq!(sampling(json!({"top_p": 0.5})), (None, Some(json!(0.5))));
}

#[test]
fn anthropic_gets_no_whitespace_only_stops_or_text() {
    // Anthropic refuses a whitespace-only stop sequence ("\n" is a common
    // one) and a whitespace-only text block (a blank reply sent back in the
    // history): both are left out, the rest kept as sent.
    let sent = |stop: Value| {
        body_of(
            &prepare(
                json!({"model": "claude-sonnet-4-5", "stop": stop, "messages": [
                    {"role": "user", "content": "Say something."},
                    {"role": "assistant", "content": "\n\n"},
                    {"role": "user", "content": [{"type": "text", "text": " "}, {"type": "text", "text": " Again, please. "}]}]}),
                None,
            )
            .unwrap(),
        )
    };
    let body = sent(json!(["\n", "END", " \t"]));
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "Say something."},
            {"type": "text", "text": " Again, please. "}]}])
    );
    assert!(sent(json!("\n")).get("stop_sequences").is_none());
}

#[test]
fn anthropic_response_format_becomes_a_forced_tool() {
    // Claude has no JSON mode: the format's schema becomes the input schema
    // of a tool the request forces; the answer's call is turned back into
    // text (tests/providers.rs).
    let schema = json!({"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}}, "required": ["reasoning", "answer"]});
    let asked = |format: Value, tools: Option<Value>| {
        let mut body = json!({"model": "claude-sonnet-4-5", "response_format": format,
            "messages": [{"role": "user", "content": "hi"}]});
        if let Some(tools) = tools {
            body["tools"] = tools;
        }
        prepare(body, None).map(|up| {
            let sent = body_of(&up);
            (sent["tools"].clone(), sent["tool_choice"].clone())
        })
    };
    let forced =
        json!({"type": "tool", "name": "tollgate_json_output", "disable_parallel_tool_use": true});
    let (tools, choice) = asked(
        json!({"type": "json_schema", "json_schema": {"name": "r", "description": "The reply", "strict": true, "schema": schema}}),
        None,
    )
    .unwrap();
    assert_eq!(
        tools,
        json!([{"name": "tollgate_json_output", "description": "The reply", "input_schema": schema}])
    );
    assert_eq!(choice, forced);
    // The schema's keys keep their order (the model writes in that order).
    let sent = tools[0]["input_schema"]["properties"].as_object().unwrap();
    assert_eq!(sent.keys().collect::<Vec<_>>(), ["reasoning", "answer"]);

    let (tools, choice) = asked(json!({"type": "json_object"}), None).unwrap();
    assert_eq!(tools[0]["input_schema"], json!({"type": "object"}));
    assert_eq!(choice, forced);
    assert_eq!(
        asked(json!({"type": "text"}), None).unwrap(),
        (Value::Null, Value::Null)
    );

    // Beside the client's tools, the answer is a call to one of them or the
    // JSON; a choice that requires one of its tools leaves the format out, one
    // that rules them out forces the format.
    let with_tools = |choice: Option<Value>| {
        let mut body = json!({"model": "claude-sonnet-4-5", "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
            "messages": [{"role": "user", "content": "hi"}]});
        if let Some(choice) = choice {
            body["tool_choice"] = choice;
        }
        let sent = body_of(&prepare(body, None).unwrap());
        let names: Vec<String> = sent["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        (names, sent["tool_choice"].clone())
    };
    let both = vec!["f".to_owned(), "tollgate_json_output".to_owned()];
    let one_of_them = json!({"type": "any", "disable_parallel_tool_use": true});
    assert_eq!(with_tools(None), (both.clone(), one_of_them.clone()));
    assert_eq!(with_tools(Some(json!("auto"))), (both.clone(), one_of_them));
    assert_eq!(with_tools(Some(json!("none"))), (both, forced.clone()));
    assert_eq!(
        with_tools(Some(json!("required"))),
        (vec!["f".to_owned()], json!({"type": "any"}))
    );
    assert_eq!(
        with_tools(Some(json!({"type": "function", "function": {"name": "f"}}))),
        (vec!["f".to_owned()], json!({"type": "tool", "name": "f"}))
    );

    // What cannot be translated is a 400 naming the field.
    assert!(matches!(
        asked(json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array", "items": {"type": "string"}}}}), None),
        Err(PrepareError::Unsupported { field, .. }) if field == "response_format.json_schema.schema"
    ));
    assert!(matches!(
        asked(json!({"type": "json_schema", "json_schema": {"name": "n"}}), None),
        Err(PrepareError::InvalidField { field, .. }) if field == "response_format.json_schema.schema"
    ));
    let reserved = json!([{"type": "function", "function": {"name": "tollgate_json_output"}}]);
    assert!(matches!(
        asked(Value::Null, Some(reserved)),
        Err(PrepareError::InvalidField { field, .. }) if field == "tools[0].function.name"
    ));
    let named_reserved = prepare(
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": {"type": "function", "function": {"name": "tollgate_json_output"}}}),
        None,
    );
    assert!(matches!(
        named_reserved,
        Err(PrepareError::InvalidField { field, .. }) if field == "tool_choice.function.name"
    ));
}

#[test]
fn gemini_response_format_and_thought_signatures() {
    let schema = json!({"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}}, "required": ["reasoning", "answer"]});
    let asked = |format: Value| {
        prepare(
            json!({"model": "gemini-2.5-flash", "response_format": format,
            "messages": [{"role": "user", "content": "hi"}]}),
            None,
        )
        .map(|up| body_of(&up)["generationConfig"].clone())
    };
    assert_eq!(
        asked(json!({"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": schema}})).unwrap(),
        json!({"responseMimeType": "application/json", "responseJsonSchema": schema})
    );
    assert_eq!(
        asked(json!({"type": "json_object"})).unwrap(),
        json!({"responseMimeType": "application/json"})
    );
    assert_eq!(asked(json!({"type": "text"})).unwrap(), Value::Null);
    assert_eq!(
        asked(Value::Null).unwrap(),
        Value::Null,
        "null is no format"
    );
    assert!(matches!(
        asked(json!({"type": "json_schema", "json_schema": {"name": "r"}})),
        Err(PrepareError::InvalidField { field, .. }) if field == "response_format.json_schema.schema"
    ));

    // The signature a Gemini 3 answer put in a tool call's id goes back on
    // that call's part; the tool's answer still finds the call by its id.
    let id = "call_resp-2_0__thought__c2lnLTE=";
    let up = prepare(json!({"model": "gemini-3-pro-preview", "messages": [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": id, "content": "{\"time\": \"10:00\"}"}
    ]}), None).unwrap();
    assert_eq!(
        body_of(&up)["contents"],
        json!([
            {"role": "user", "parts": [{"text": "What time is it?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": "c2lnLTE="}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_time", "response": {"time": "10:00"}}}]}
        ])
    );
}

#[test]
fn openai_tool_kinds_pass_through_and_are_refused_where_they_cannot_go() {
    // Custom tools, `allowed_tools` and custom calls in the history are
    // OpenAI's own: sent on as they came, refused (naming the field) for a
    // provider without them; a function tool still needs its function.
    let body = |model: &str| {
        json!({"model": model, "messages": [
            {"role": "user", "content": "Run it"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_c", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}}]},
            {"role": "tool", "tool_call_id": "call_c", "content": "1"}
        ],
        "tools": [
            {"type": "custom", "custom": {"name": "sql", "description": "Runs SQL", "format": {"type": "text"}}},
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "custom", "custom": {"name": "sql"}}]}}})
    };
    let up = prepare(body("gpt-5"), None).unwrap();
    let mut expected = body("gpt-5");
    expected["model"] = json!("gpt-5");
    assert_eq!(body_of(&up), expected);

    for model in ["claude-sonnet-4-5", "gemini-2.5-flash"] {
        let refused = prepare(body(model), None);
        assert!(
            matches!(&refused, Err(PrepareError::Unsupported { field, .. }) if field == "messages[1].tool_calls[0]"),
            "{model}: {refused:?}"
        );
        let mut no_history = body(model);
        no_history["messages"] = json!([{"role": "user", "content": "Run it"}]);
        let refused = prepare(no_history.clone(), None);
        assert!(
            matches!(&refused, Err(PrepareError::Unsupported { field, .. }) if field == "tools[0]"),
            "{model}: {refused:?}"
        );
        no_history["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        let refused = prepare(no_history, None);
        assert!(
            matches!(&refused, Err(PrepareError::Unsupported { field, .. }) if field == "tool_choice"),
            "{model}: {refused:?}"
        );
    }
    let missing = parse_request(
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        missing.err().map(|e| e.to_openai().error.param),
        Some(Some("tools[0].function".to_owned()))
    );
}

#[test]
fn gemini_tool_schemas_fit_its_schema_subset() {
    // A tool without parameters goes without `parameters` (Gemini refuses an
    // object with no properties); strict mode's nullable types become
    // `nullable`; JSON Schema keys Gemini does not take are dropped.
    let up = prepare(json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "find", "parameters": {"type": "object", "additionalProperties": false,
                "properties": {"city": {"type": ["string", "null"]}, "tags": {"type": "array", "items": {"type": ["integer", "null"]}},
                    "any": {"type": ["string", "number", "null"]}},
                "required": ["city", "tags", "any"]}}}]}), None).unwrap();
    assert_eq!(
        body_of(&up)["tools"],
        json!([{"functionDeclarations": [
            {"name": "now"},
            {"name": "find", "parameters": {"type": "object",
                "properties": {"city": {"type": "string", "nullable": true}, "tags": {"type": "array", "items": {"type": "integer", "nullable": true}},
                    "any": {"anyOf": [{"type": "string"}, {"type": "number"}], "nullable": true}},
                "required": ["city", "tags", "any"]}}
        ]}])
    );
}

#[test]
fn gemini_tool_schemas_have_their_references_inlined() {
    // Pydantic and zod write nested models as `$defs` + `$ref`, which
    // Gemini's schema subset does not have: they are inlined (keywords
    // beside a reference win), `$defs` dropped. Data (`default`, `enum`)
    // and property names are not mistaken for references.
    let declared = |parameters: Value| {
        prepare(
            json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "plan", "parameters": parameters}}]}),
            None,
        )
        .map(|up| body_of(&up)["tools"][0]["functionDeclarations"][0]["parameters"].clone())
    };
    let pydantic = json!({
        "$defs": {
            "Step": {"type": "object", "title": "Step", "additionalProperties": false,
                "properties": {"what": {"type": "string"}, "when": {"$ref": "#/$defs/When"}}, "required": ["what", "when"]},
            "When": {"type": "string", "enum": ["now", "later"]}
        },
        "type": "object", "additionalProperties": false,
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}},
            "first": {"$ref": "#/$defs/Step", "description": "The first step"},
            "again": {"type": "array", "items": {"$ref": "#/properties/first"}},
            "$ref": {"type": "string", "default": {"$ref": "not a reference"}}
        },
        "required": ["steps"]
    });
    let step = json!({"type": "object", "title": "Step",
        "properties": {"what": {"type": "string"}, "when": {"type": "string", "enum": ["now", "later"]}}, "required": ["what", "when"]});
    let mut first = step.clone();
    first["description"] = json!("The first step");
    assert_eq!(
        declared(pydantic).unwrap(),
        json!({"type": "object", "properties": {
            "steps": {"type": "array", "items": step},
            "first": first,
            "again": {"type": "array", "items": first},
            "$ref": {"type": "string", "default": {"$ref": "not a reference"}}
        }, "required": ["steps"]})
    );
    // A reference to nothing, or outside the schema, is a 400 naming the
    // tool's parameters.
    for (parameters, why) in [
        (
            json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}),
            "not local",
        ),
        (
            json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}),
            "points at nothing",
        ),
    ] {
        let refused = declared(parameters);
        assert!(
            matches!(&refused, Err(PrepareError::Unsupported { field, reason, .. })
                if field == "tools[0].function.parameters" && reason.contains(why)),
            "{why}: {refused:?}"
        );
    }
}

#[test]
fn gemini_tool_schemas_the_subset_cannot_say_go_as_json_schema() {
    let declared = |parameters: Value| {
        let up = prepare(
            json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "t", "parameters": parameters}}]}),
            None,
        )
        .unwrap();
        body_of(&up)["tools"][0]["functionDeclarations"][0].clone()
    };
    // Pydantic's other keywords, mapped to the subset's fields or dropped;
    // `Optional[X]` (`anyOf` with a null option) is X, nullable.
    let pydantic = declared(
        json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "$defs": {"Unit": {"type": "string", "enum": ["c", "f"]}},
        "properties": {
            "kind": {"const": "reading"},
            "value": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "unit": {"allOf": [{"$ref": "#/$defs/Unit"}], "description": "Which scale"},
            "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 10, "multipleOf": 1},
            "tags": {"type": "array", "items": {"type": "string", "format": "uri"}, "uniqueItems": true, "examples": [["a"]]},
            "at": {"type": "string", "format": "date-time"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Note"},
            "scale": {"anyOf": [{"$ref": "#/$defs/Unit"}, {"type": "null"}]},
            "pick": {"type": ["string", "null"], "enum": ["a", null]},
            "loose": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {}},
            "nested": {"allOf": [{"allOf": [{"type": "string"}], "description": "inner"}], "description": "outer"}
        },
        "required": ["kind", "value"]}),
    );
    assert_eq!(
        pydantic,
        json!({"name": "t", "parameters": {"type": "object",
            "properties": {
                "kind": {"type": "string", "enum": ["reading"]},
                "value": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                "unit": {"description": "Which scale", "type": "string", "enum": ["c", "f"]},
                "count": {"type": "integer", "minimum": 0, "maximum": 10},
                "tags": {"type": "array", "items": {"type": "string"}, "example": ["a"]},
                "at": {"type": "string", "format": "date-time"},
                "note": {"default": null, "title": "Note", "nullable": true, "type": "string"},
                "scale": {"nullable": true, "type": "string", "enum": ["c", "f"]},
                "pick": {"type": "string", "nullable": true, "enum": ["a"]},
                "loose": {"type": "object", "properties": {"a": {"type": "string"}}},
                "nested": {"description": "outer", "type": "string"}
            },
            "required": ["kind", "value"]}})
    );
    // A map (Pydantic's `dict`), a free-form object, a tuple, a recursive
    // model, a chain of references too long to inline: JSON Schema as sent
    // (less `$schema`).
    let mut chain = serde_json::Map::new();
    for i in 0..200 {
        chain.insert(
            format!("D{i}"),
            json!({"$ref": format!("#/$defs/D{}", i + 1)}),
        );
    }
    chain.insert("D200".to_owned(), json!({"type": "string"}));
    for schema in [
        json!({"type": "object", "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}}}),
        json!({"type": "object", "properties": {"metadata": {"type": "object"}}}),
        json!({"type": "object", "properties": {"values": {"type": "array", "items": {}}}}),
        json!({"type": "object", "properties": {"level": {"enum": [1, 2, 3]}}}),
        json!({"type": "object", "properties": {"never": {"type": "null"}}}),
        json!({"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "object", "properties": {"b": {"type": "string"}}}]}),
        json!({"type": "object", "properties": {"point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]}}}),
        json!({"type": "object", "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
            "properties": {"head": {"$ref": "#/$defs/Node"}}}),
        json!({"type": "object", "$defs": chain, "properties": {"x": {"$ref": "#/$defs/D0"}}}),
    ] {
        let mut with_dialect = schema.clone();
        with_dialect["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        assert_eq!(
            declared(with_dialect),
            json!({"name": "t", "parametersJsonSchema": schema}),
        );
    }
}

#[test]
fn a_gemini_signature_in_a_tool_call_id_goes_only_to_gemini() {
    // A conversation that started on Gemini 3 and moves to another model:
    // Anthropic allows only [a-zA-Z0-9_-] in ids, OpenAI limits their length.
    let id = "call_r_0__thought__c2lnL+/=";
    let conversation = |model: &str| {
        json!({"model": model, "messages": [
            {"role": "user", "content": "What time is it?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": id, "content": "10:00"}]})
    };
    let claude = body_of(&prepare(conversation("claude-sonnet-4-5"), None).unwrap());
    assert_eq!(claude["messages"][1]["content"][0]["id"], "call_r_0");
    assert_eq!(
        claude["messages"][2]["content"][0]["tool_use_id"],
        "call_r_0"
    );
    let gpt = body_of(&prepare(conversation("gpt-4o"), None).unwrap());
    assert_eq!(gpt["messages"][1]["tool_calls"][0]["id"], "call_r_0");
    assert_eq!(gpt["messages"][2]["tool_call_id"], "call_r_0");
    let gemini = body_of(&prepare(conversation("gemini-3-pro-preview"), None).unwrap());
    assert_eq!(
        gemini["contents"][1]["parts"][0]["thoughtSignature"],
        "c2lnL+/="
    );
}

#[test]
fn a_named_tool_choice_without_a_name_is_refused() {
    for choice in [
        json!({"type": "function", "function": {"nme": "f"}}),
        json!({"type": "function", "function": {"name": 7}}),
    ] {
        let err = parse_request(
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "tool_choice": choice})
                .to_string()
                .as_bytes(),
        )
        .err();
        assert_eq!(
            err.map(|e| e.to_openai().error.param),
            Some(Some("tool_choice.function.name".to_owned())),
            "{choice}"
        );
    }
}

#[test]
fn json_schemas_keep_their_key_order() {
    // Structured outputs are generated in the schema's key order: a
    // re-encoded body must not sort `properties` (serde_json's default map).
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": {
            "type": "object",
            "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["reasoning", "answer"], "additionalProperties": false}}},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "string"}}}}}]});
    let sent = String::from_utf8(prepare(body, None).unwrap().body.to_vec()).unwrap();
    let at = |needle: &str| {
        sent.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in {sent}"))
    };
    assert!(at("\"reasoning\"") < at("\"answer\""), "{sent}");
    assert!(at("\"zeta\"") < at("\"alpha\""), "{sent}");
    assert!(at("\"model\"") < at("\"messages\""), "{sent}");
}

#[test]
fn openai_request_passes_through() {
    let mut body = conversation("openai/gpt-4o");
    body["stream"] = json!(true);
    let up = prepare(body.clone(), None).unwrap();
    assert_eq!(up.url, "https://api.openai.com/v1/chat/completions");
    assert_eq!(header(&up, "authorization"), Some("Bearer sk-secret-123"));
    let mut expected = body;
    expected["model"] = json!("gpt-4o");
    expected["stream_options"] = json!({"include_usage": true});
    assert_eq!(
        body_of(&up),
        expected,
        "only the model and stream_options change"
    );

    let clamped = prepare(
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        Some(64),
    )
    .unwrap();
    assert_eq!(body_of(&clamped)["max_completion_tokens"], 64);
    assert!(body_of(&clamped).get("stream_options").is_none());
    let custom = prepare(json!({"model": "together/meta-llama/Llama-3-70b", "messages": [{"role": "user", "content": "hi"}]}), Some(64)).unwrap();
    assert_eq!(custom.url, "https://api.together.xyz/v1/chat/completions");
    assert_eq!(body_of(&custom)["model"], "meta-llama/Llama-3-70b");
    assert_eq!(body_of(&custom)["max_tokens"], 64);
    let xai = prepare(
        json!({"model": "grok-3", "messages": [{"role": "user", "content": "hi"}]}),
        None,
    )
    .unwrap();
    assert_eq!(xai.url, "https://api.x.ai/v1/chat/completions");
}

/// A router behind a custom provider (OpenRouter) bills fallback models as
/// the model that answered and plugins per use: neither is in the price
/// the call is held and charged at, so both are refused, naming the field.
/// Other servers' own output caps are held to the call's cap.
#[test]
fn custom_providers_get_no_unpriced_router_fields_and_every_output_cap_held() {
    let ask = |extra: Value| {
        let mut body =
            json!({"model": "together/m", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        prepare(body, Some(64))
    };
    for (field, value) in [
        ("models", json!(["anthropic/claude-opus-4.1"])),
        ("plugins", json!([{"id": "web"}])),
        ("web_search_options", json!({})),
    ] {
        let err = ask(json!({ field: value })).unwrap_err();
        assert!(
            matches!(&err, PrepareError::Unsupported { field: f, .. } if f == field),
            "{field}: {err:?}"
        );
    }
    let sent = body_of(&ask(json!({"n_predict": -1, "max_new_tokens": 9000})).unwrap());
    assert_eq!(
        (sent["n_predict"].clone(), sent["max_new_tokens"].clone()),
        (json!(64), json!(64))
    );
    let sent = body_of(&ask(json!({"n_predict": 10})).unwrap());
    assert_eq!(sent["n_predict"], 10, "a smaller cap is the client's");
    // A built-in provider's fields are its own.
    let openai = prepare(
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "n_predict": 5000}),
        Some(64),
    )
    .unwrap();
    assert_eq!(body_of(&openai)["n_predict"], 5000);
}

#[test]
fn keys_never_print() {
    let key = ProviderKey::new("sk-secret-123");
    assert_eq!(format!("{key:?}"), "ProviderKey(***)");
    for model in ["gpt-4o", "claude-3-haiku", "gemini-2.0-flash"] {
        let up = prepare(
            json!({"model": model, "messages": [{"role": "user", "content": "my private prompt"}]}),
            None,
        )
        .unwrap();
        let debug = format!("{up:?}");
        assert!(!debug.contains("sk-secret-123"), "{model}: {debug}");
        assert!(!debug.contains("my private prompt"), "{model}: {debug}");
    }
    let bad = prepare_upstream(
        &route("gpt-4o", &[], &BaseUrls::default()).unwrap(),
        &parse_request(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap(),
        &ProviderKey::new("bad\nkey"),
        None,
    );
    assert!(matches!(bad, Err(PrepareError::InvalidKey)));
}

#[test]
fn images_and_bad_tool_arguments() {
    let image = |url: &str| {
        json!({"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": url}}]})
    };
    let up = prepare(json!({"model": "claude-3-haiku", "messages": [image("data:image/png;base64,iVBORw0KGgo=")]}), None).unwrap();
    assert_eq!(
        body_of(&up)["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    );
    let up = prepare(json!({"model": "gemini-2.0-flash", "messages": [image("data:image/jpeg;base64,/9j/4AAQ")]}), None).unwrap();
    assert_eq!(
        body_of(&up)["contents"][0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}})
    );
    let remote = prepare(
        json!({"model": "gemini-2.0-flash", "messages": [image("https://example.com/a.png")]}),
        None,
    );
    assert!(matches!(remote, Err(PrepareError::Unsupported { .. })));

    let bad_args = json!({"model": "claude-3-haiku", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]});
    match prepare(bad_args, None) {
        Err(PrepareError::InvalidField { field, .. }) => {
            assert_eq!(field, "messages[1].tool_calls[0].function.arguments")
        }
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

/// OpenAI's `input_audio` parts reach Gemini as inline audio (one line of
/// base64); a format Gemini is not sent is a 400 naming the part.
#[test]
fn gemini_takes_input_audio_as_inline_data() {
    let with_audio = |format: &str| {
        prepare(
            json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is said?"},
                {"type": "input_audio", "input_audio": {"data": "UklG\nRiQA", "format": format}}]}]}),
            None,
        )
    };
    let up = with_audio("wav").unwrap();
    assert_eq!(
        body_of(&up)["contents"][0]["parts"],
        json!([{"text": "What is said?"}, {"inlineData": {"mimeType": "audio/wav", "data": "UklGRiQA"}}])
    );
    let up = with_audio("MP3").unwrap();
    assert_eq!(
        body_of(&up)["contents"][0]["parts"][1]["inlineData"]["mimeType"],
        "audio/mp3"
    );
    assert!(matches!(
        with_audio("flac"),
        Err(PrepareError::Unsupported { field, .. }) if field == "messages[0].content[1]"
    ));
}
