//! The hand-written messages encode as `rls.proto` numbers them: pinned byte for byte.

#![allow(clippy::unwrap_used)]

use portcullis_ratelimit::proto::*;
use prost::Message;

#[test]
fn a_request_encodes_with_the_protos_field_numbers() {
    let request = RateLimitRequest {
        domain: "d".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry { key: "k".into(), value: "v".into() }],
            limit: Some(RateLimitOverride { requests_per_unit: 5, unit: Unit::Minute as i32 }),
        }],
        hits_addend: 3,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 0x01, b'd',                       // 1: domain
        0x12, 0x0e,                             // 2: descriptors[0], 14 bytes
            0x0a, 0x06,                         //   1: entries[0], 6 bytes
                0x0a, 0x01, b'k', 0x12, 0x01, b'v',
            0x12, 0x04, 0x08, 0x05, 0x10, 0x02, //   2: limit {1: 5, 2: MINUTE}
        0x18, 0x03,                             // 3: hits_addend
    ];
    assert_eq!(request.encode_to_vec(), expected);
    assert_eq!(RateLimitRequest::decode(&expected[..]).unwrap(), request);
}

#[test]
fn a_response_decodes_with_the_protos_field_numbers_and_skips_unknown_fields() {
    #[rustfmt::skip]
    let bytes = [
        0x08, 0x02,                                     // 1: overall_code OVER_LIMIT
        0x12, 0x10,                                     // 2: statuses[0], 16 bytes
            0x08, 0x02,                                 //   1: code
            0x12, 0x06, 0x08, 0x05, 0x10, 0x02, 0x1a, 0x00, // 2: current_limit {5, MINUTE, ""}
            0x18, 0x00,                                 //   3: limit_remaining 0
            0x22, 0x02, 0x08, 0x0c,                     //   4: duration_until_reset {seconds: 12}
        0x1a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'1', // 3: response_headers_to_add[0] a: 1
        0x32, 0x00,                                     // 6: dynamic_metadata (not read)
    ];
    let response = RateLimitResponse::decode(&bytes[..]).unwrap();
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    let status = &response.statuses[0];
    assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 5);
    assert_eq!(status.duration_until_reset.unwrap().as_nanos(), 12_000_000_000);
    assert_eq!(response.response_headers_to_add[0], HeaderValue { key: "a".into(), value: "1".into() });
}
