//! Property tests: nothing a peer sends can make the decoders panic, and every frame we can
//! build survives an encode/decode round trip.

use outpost_protocol::{AgentFrame, ErrorBody, Output, OutputStream, Response, ServerFrame};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = AgentFrame::decode(&text);
        let _ = ServerFrame::decode(&text);
    }

    #[test]
    fn json_like_text_never_panics(text in r#"\{("[a-z_]{1,12}":("[^"]{0,16}"|-?[0-9]{1,20}(\.[0-9]+)?|null|true|\[\]|\{\}),?){0,6}\}"#) {
        let _ = AgentFrame::decode(&text);
        let _ = ServerFrame::decode(&text);
    }

    #[test]
    fn typed_frames_with_random_fields_never_panic(
        ty in prop::sample::select(vec!["register", "heartbeat", "ack", "output", "response", "command", "connected", "cancel", "error"]),
        field in "[a-z_]{1,12}",
        value in prop::sample::select(vec!["null", "1", "-1", "1e400", "\"x\"", "[]", "{}", "true", "18446744073709551616"]),
    ) {
        let text = format!(r#"{{"type":"{ty}","{field}":{value}}}"#);
        let _ = AgentFrame::decode(&text);
        let _ = ServerFrame::decode(&text);
    }

    #[test]
    fn output_frames_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..256), seq in any::<u64>()) {
        let (data, data_b64) = outpost_protocol::encode_output_data(&bytes);
        let frame = AgentFrame::Output(Output {
            command_id: uuid::Uuid::now_v7(),
            stream: OutputStream::Stdout,
            seq,
            data,
            data_b64,
        });
        let back = AgentFrame::decode(&frame.encode()).expect("decode");
        prop_assert_eq!(&back, &frame);
        if let AgentFrame::Output(o) = back {
            let got = outpost_protocol::decode_output_data(o.data.as_deref(), o.data_b64.as_deref()).expect("bytes");
            prop_assert_eq!(got, bytes);
        }
    }

    #[test]
    fn responses_round_trip(code in "[a-z_]{1,20}", message in ".{0,100}", success in any::<bool>()) {
        let id = uuid::Uuid::now_v7();
        let frame = AgentFrame::Response(if success {
            Response::ok(id, serde_json::json!({"message": message}))
        } else {
            Response { error: Some(ErrorBody::new(&code, message)), ..Response::failed(id, "x", "") }
        });
        prop_assert_eq!(AgentFrame::decode(&frame.encode()).expect("decode"), frame);
    }
}
