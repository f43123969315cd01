//! The contract's example frames, kept as golden fixtures: each must decode, and encode back to
//! exactly the same JSON. A failure here means the wire format changed.

use std::path::Path;

use outpost_protocol::{
    AgentFrame, DecodeError, OutputStream, ServerFrame, decode_output_data, encode_output_data,
};
use serde_json::Value;

fn fixtures(side: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(side);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("fixture");
            (path.display().to_string(), text.trim().to_owned())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

#[test]
fn server_frames_round_trip() {
    for (name, text) in fixtures("server") {
        let frame = ServerFrame::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let back: Value = serde_json::from_str(&frame.encode()).expect("json");
        let want: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back, want, "{name} changed on a round trip");
    }
}

#[test]
fn agent_frames_round_trip() {
    for (name, text) in fixtures("agent") {
        let frame = AgentFrame::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let back: Value = serde_json::from_str(&frame.encode()).expect("json");
        let want: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back, want, "{name} changed on a round trip");
        // The documented registers are within the protocol's limits.
        if let AgentFrame::Register { data } = &frame {
            data.check().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let text =
        r#"{"type":"ack","command_id":"0190a5c4-7b2e-7c3d-8e4f-5a6b7c8d9e0f","future":{"x":1}}"#;
    assert!(matches!(
        AgentFrame::decode(text),
        Ok(AgentFrame::Ack { .. })
    ));
    assert!(matches!(
        ServerFrame::decode(text),
        Ok(ServerFrame::Ack { .. })
    ));
}

#[test]
fn decode_errors_are_classified() {
    type Check = fn(&DecodeError) -> bool;
    let cases: &[(&str, Check)] = &[
        (
            r#"{"type":"teleport"}"#,
            |e| matches!(e, DecodeError::UnknownType(t) if t == "teleport"),
        ),
        (
            r#"{"type":"ack"}"#,
            |e| matches!(e, DecodeError::Malformed(m) if m.contains("command_id")),
        ),
        (
            r#"{"command_id":"x"}"#,
            |e| matches!(e, DecodeError::Malformed(m) if m.contains("type")),
        ),
        ("not json", |e| matches!(e, DecodeError::Malformed(_))),
        ("[1,2,3]", |e| matches!(e, DecodeError::Malformed(_))),
        (r#"{"type":7}"#, |e| matches!(e, DecodeError::Malformed(_))),
        (r#"{"type":"ack","command_id":"not-a-uuid"}"#, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
        // A server-only frame sent by an agent is unknown to the server.
        (r#"{"type":"connected"}"#, |e| {
            matches!(e, DecodeError::UnknownType(_))
        }),
    ];
    for (text, ok) in cases {
        let err = AgentFrame::decode(text).expect_err(text);
        assert!(ok(&err), "{text}: got {err:?}");
    }
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let big = format!(
        r#"{{"type":"ack","command_id":"0190a5c4-7b2e-7c3d-8e4f-5a6b7c8d9e0f","pad":"{}"}}"#,
        "x".repeat(outpost_protocol::limits::MAX_FRAME_BYTES)
    );
    assert!(matches!(
        AgentFrame::decode(&big),
        Err(DecodeError::TooLarge(_))
    ));
}

#[test]
fn unknown_type_names_are_truncated() {
    let text = format!(r#"{{"type":"{}"}}"#, "é".repeat(1000));
    match AgentFrame::decode(&text) {
        Err(DecodeError::UnknownType(t)) => assert!(t.len() <= 68, "{} bytes", t.len()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn output_bytes_survive_both_encodings() {
    for bytes in [&b"hello\n"[..], &[0xff, 0xfe, 0x00, b'a'][..], &[][..]] {
        let (data, b64) = encode_output_data(bytes);
        assert_eq!(data.is_some(), std::str::from_utf8(bytes).is_ok());
        let back = decode_output_data(data.as_deref(), b64.as_deref()).expect("decode");
        assert_eq!(back, bytes);
    }
    assert!(decode_output_data(None, None).is_err());
    assert!(decode_output_data(Some("a"), Some("YQ==")).is_err());
    assert!(decode_output_data(None, Some("!!!")).is_err());
    assert_eq!(OutputStream::Stderr.as_str(), "stderr");
}

#[test]
fn a_command_s_debug_leaves_out_parameter_values() {
    let text = r#"{"type":"command","command_id":"0190a5c4-7b2e-7c3d-8e4f-5a6b7c8d9e0f","command":"run","data":{"script":"deploy","params":{"DB_PASSWORD":"hunter2-secret"}},"timeout_s":60,"timestamp":"2026-01-01T12:00:00Z"}"#;
    let frame = ServerFrame::decode(text).expect("decode");
    let shown = format!("{frame:?}");
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(
        shown.contains("DB_PASSWORD") && shown.contains("deploy"),
        "{shown}"
    );
    assert!(
        frame.encode().contains("hunter2-secret"),
        "the wire keeps the value"
    );
}
