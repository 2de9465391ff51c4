//! How `build_body` translates tool settings and tool results.

use super::*;

fn body(request: Value) -> Result<Value, PrepareError> {
    let request: ChatRequest = serde_json::from_value(request).unwrap();
    let body = build_body(&request, "claude-test", 1024, false)?;
    Ok(serde_json::from_slice(&body).unwrap())
}

/// A request with one client tool, `extra` merged in.
fn with_tool(extra: Value) -> Value {
    let mut request = json!({
        "model": "claude-test",
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {}}}}],
    });
    for (key, value) in extra.as_object().unwrap() {
        request[key] = value.clone();
    }
    request
}

#[test]
fn parallel_tool_calls_false_disables_parallel_tool_use() {
    let choice = |extra: Value| body(with_tool(extra)).unwrap()["tool_choice"].clone();
    let off = json!({"parallel_tool_calls": false});
    assert_eq!(
        choice(off.clone()),
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    for (client, sent) in [
        (
            json!("auto"),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (
            json!("required"),
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (
            json!({"type": "function", "function": {"name": "weather"}}),
            json!({"type": "tool", "name": "weather", "disable_parallel_tool_use": true}),
        ),
        (json!("none"), json!({"type": "none"})),
    ] {
        let extra = json!({"parallel_tool_calls": false, "tool_choice": client});
        assert_eq!(choice(extra), sent, "{client}");
    }
    // Parallel calls allowed (OpenAI's default), or no tools to call.
    assert_eq!(choice(json!({"parallel_tool_calls": true})), Value::Null);
    assert_eq!(choice(json!({"parallel_tool_calls": null})), Value::Null);
    let mut no_tools = with_tool(off);
    no_tools.as_object_mut().unwrap().remove("tools");
    assert_eq!(body(no_tools).unwrap()["tool_choice"], Value::Null);
}

#[test]
fn parallel_tool_calls_false_keeps_the_response_format_tool_choice() {
    let format = json!({"type": "json_object"});
    let sent = |tool_choice: Value| {
        let extra = json!({"parallel_tool_calls": false, "response_format": format,
            "tool_choice": tool_choice});
        body(with_tool(extra)).unwrap()["tool_choice"].clone()
    };
    assert_eq!(
        sent(json!("auto")),
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        sent(json!("none")),
        json!({"type": "tool", "name": RESPONSE_FORMAT_TOOL,
            "disable_parallel_tool_use": true})
    );
    assert_eq!(
        sent(json!("required")),
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

#[test]
fn parallel_tool_calls_must_be_a_boolean() {
    let err = body(with_tool(json!({"parallel_tool_calls": "no"}))).unwrap_err();
    assert!(
        matches!(&err, PrepareError::InvalidField { field, .. } if field == "parallel_tool_calls"),
        "{err:?}"
    );
}

#[test]
fn tool_schemas_without_a_type_become_objects() {
    let schema = |parameters: Value| {
        let mut request = with_tool(json!({}));
        request["tools"][0]["function"]["parameters"] = parameters;
        body(request).unwrap()["tools"][0]["input_schema"].clone()
    };
    assert_eq!(
        schema(json!({})),
        json!({"type": "object", "properties": {}})
    );
    assert_eq!(
        schema(json!({"properties": {"city": {"type": "string"}}, "required": ["city"]})),
        json!({"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]})
    );
    let typed = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    assert_eq!(schema(typed.clone()), typed);
    let mut no_parameters = with_tool(json!({}));
    no_parameters["tools"][0]["function"]
        .as_object_mut()
        .unwrap()
        .remove("parameters");
    assert_eq!(
        body(no_parameters).unwrap()["tools"][0]["input_schema"],
        json!({"type": "object", "properties": {}})
    );
}

/// A conversation whose last message is the answer to call `call_1`.
fn tool_answer(content: Value) -> Value {
    json!({
        "model": "claude-test",
        "messages": [
            {"role": "user", "content": "what is on screen?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "screenshot", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": content},
        ],
    })
}

#[test]
fn tool_results_keep_their_images() {
    let result = |content: Value| body(tool_answer(content)).map(|b| b["messages"][2].clone());
    let with_image = json!([
        {"type": "text", "text": "the screen:"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]);
    assert_eq!(
        result(with_image).unwrap(),
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
        "content": [
            {"type": "text", "text": "the screen:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url",
                "url": "https://example.com/a.png"}},
        ]}]})
    );
    // Text alone, in parts or not, stays a string.
    let text_parts = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
    assert_eq!(
        result(text_parts).unwrap()["content"][0]["content"],
        json!("a\nb")
    );
    assert_eq!(
        result(json!("sunny")).unwrap()["content"][0]["content"],
        json!("sunny")
    );
    // Parts Anthropic has no block for are refused, as in user content.
    let audio = json!([{"type": "text", "text": "listen"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]);
    let err = result(audio).unwrap_err();
    assert!(
        matches!(&err, PrepareError::Unsupported { field, .. } if field == "messages[2].content[1]"),
        "{err:?}"
    );
}

#[test]
fn a_conversation_of_system_messages_only_is_refused_naming_messages() {
    let err = body(json!({"model": "claude-test", "messages": [
        {"role": "system", "content": "Say hi."},
        {"role": "developer", "content": "Be brief."}]}))
    .unwrap_err();
    assert!(
        matches!(&err, PrepareError::Unsupported { field, .. } if field == "messages"),
        "{err:?}"
    );
}

#[test]
fn tool_call_arguments_must_be_a_json_object() {
    let call = |arguments: &str| {
        body(json!({"model": "claude-test", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "f", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"}]}))
    };
    assert_eq!(
        call(r#"{"a": 1}"#).unwrap()["messages"][1]["content"][0]["input"],
        json!({"a": 1})
    );
    assert_eq!(
        call("").unwrap()["messages"][1]["content"][0]["input"],
        json!({})
    );
    for arguments in ["[]", "\"x\"", "42", "{\"a\":"] {
        let err = call(arguments).unwrap_err();
        assert!(
            matches!(&err, PrepareError::InvalidField { field, .. }
                if field == "messages[1].tool_calls[0].function.arguments"),
            "{arguments}: {err:?}"
        );
    }
}
