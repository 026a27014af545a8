//! Generates the RateLimitService server and client stubs. The messages are written by hand in
//! `src/proto.rs` (prost derives), so no `protoc` and no Envoy proto tree are needed to build.

fn main() {
    #[cfg(feature = "server")]
    {
        let method = tonic_build::manual::Method::builder()
            .name("should_rate_limit")
            .route_name("ShouldRateLimit")
            .input_type("crate::proto::RateLimitRequest")
            .output_type("crate::proto::RateLimitResponse")
            .codec_path("tonic_prost::ProstCodec")
            .build();
        let service = tonic_build::manual::Service::builder()
            .name("RateLimitService")
            .package("envoy.service.ratelimit.v3")
            .method(method)
            .build();
        tonic_build::manual::Builder::new().compile(&[service]);
    }
}
