//! The host calls, each `unsafe` block only passing pointers to the host. Every import returns
//! the host's status as a plain `u32`: an enum return type would make a status this crate does not
//! know undefined behaviour, and none of these calls panics on one.

use alloc::vec::Vec;
use core::ptr::{null, null_mut};
use core::time::Duration;

use crate::context;
use crate::types::{BufferType, LogLevel, MapType, MetricType, Status};

// The imports of proxy-wasm ABI 0.2.1 that the filter and the floor use.
unsafe extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_set_header_map_pairs(map_type: u32, data: *const u8, size: usize) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_grpc_call(
        upstream_data: *const u8,
        upstream_size: usize,
        service_name_data: *const u8,
        service_name_size: usize,
        method_name_data: *const u8,
        method_name_size: usize,
        initial_metadata_data: *const u8,
        initial_metadata_size: usize,
        message_data: *const u8,
        message_size: usize,
        timeout_milliseconds: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
}

#[inline]
fn ok(status: u32) -> Result<(), Status> {
    match Status::from_raw(status) {
        Status::Ok => Ok(()),
        status => Err(status),
    }
}

/// Takes ownership of a buffer the host filled, or `None` when it answered anything but `Ok`.
#[inline]
fn take(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    ok(status).ok()?;
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: on `Ok` the host hands over `size` bytes it obtained from
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), which the guest frees.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Writes `message` to Envoy's log. Best effort: a log call that fails is not an error anyone
/// could act on.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the host only reads `message.len()` bytes of a live slice during the call.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Logs `parts` joined, without formatting: the panic handler's message, and messages of a
/// few pieces. Up to 512 bytes they are joined on the stack (a panic handler should not count on
/// the heap); a longer message, such as a configuration error quoting a long value, is joined on
/// the heap rather than cut.
pub fn log_parts(level: LogLevel, parts: &[&str]) {
    let mut buffer = [0u8; 512];
    let mut len = 0;
    for part in parts {
        match buffer.get_mut(len..len + part.len()) {
            Some(to) => to.copy_from_slice(part.as_bytes()),
            None => return log(level, &parts.concat()),
        }
        len += part.len();
    }
    // SAFETY: the host only reads `len` bytes of the live buffer during the call.
    let _ = unsafe { proxy_log(level as u32, buffer.as_ptr(), len) };
}

/// Unix time in nanoseconds, as the host's clock gives it; `None` if it gives none.
#[inline]
pub fn current_time_nanos() -> Option<u64> {
    let mut nanos = 0;
    // SAFETY: the host writes one `u64` into the live local.
    ok(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) }).ok().map(|()| nanos)
}

/// Asks for `on_tick` every `period` (whole milliseconds).
pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: a plain value crosses.
    ok(unsafe { proxy_set_tick_period_milliseconds(millis) })
}

/// Up to `max_size` bytes of a host buffer from `start`; `Ok(None)` when the host has none.
pub fn get_buffer(buffer: BufferType, start: usize, max_size: usize) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the out-pointers are live locals; the host writes one pointer and one size.
    let status = unsafe { proxy_get_buffer_bytes(buffer as u32, start, max_size, &mut data, &mut size) };
    match Status::from_raw(status) {
        Status::Ok if data.is_null() => Ok(None),
        Status::Ok => Ok(take(status, data, size)),
        Status::NotFound => Ok(None),
        status => Err(status),
    }
}

/// The whole serialised header map; `None` if the host could not give it.
#[inline]
pub fn get_map(map: MapType) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the out-pointers are live locals; the host writes one pointer and one size.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    take(status, data, size)
}

/// Replaces the whole header map with `serialised` (as [`crate::MapWriter`] builds it).
#[inline]
pub fn set_map(map: MapType, serialised: &[u8]) -> Result<(), Status> {
    // SAFETY: the host only reads `serialised.len()` bytes from a live slice during the call.
    ok(unsafe { proxy_set_header_map_pairs(map as u32, serialised.as_ptr(), serialised.len()) })
}

/// Sets header `name` to `value`, removing every value it had.
#[inline]
pub fn replace_map_value(map: MapType, name: &[u8], value: &[u8]) -> Result<(), Status> {
    // SAFETY: the host only reads `name.len()` and `value.len()` bytes of live slices during the call.
    ok(unsafe { proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Removes every value of header `name`.
#[inline]
pub fn remove_map_value(map: MapType, name: &[u8]) -> Result<(), Status> {
    // SAFETY: the host only reads `name.len()` bytes of a live slice during the call.
    ok(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property by its path, the segments already joined by NULs (`b"source\0address"`);
/// `None` when the host has no value for it.
#[inline]
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host reads `path.len()` bytes of a live slice and writes one pointer and one
    // size into the live locals.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    if data.is_null() {
        return None;
    }
    take(status, data, size)
}

/// A shared-data value and its CAS (0 when the host gives none); `(None, 0)` for a key the host
/// does not hold. An unexpected status is an error the caller handles.
#[inline]
pub fn get_shared_data(key: &[u8]) -> Result<(Option<Vec<u8>>, u32), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    // SAFETY: the host reads `key.len()` bytes of a live slice and writes one pointer, one size
    // and one CAS into the live locals.
    let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match Status::from_raw(status) {
        Status::Ok if data.is_null() => Ok((None, cas)),
        Status::Ok => Ok((take(status, data, size), cas)),
        Status::NotFound => Ok((None, 0)),
        status => Err(status),
    }
}

/// Writes a shared-data value if its CAS is still `cas` (0: unconditionally).
#[inline]
pub fn set_shared_data(key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: the host only reads `key.len()` and `value.len()` bytes of live slices.
    ok(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// Answers the request with `status`, the serialised `headers` (as [`crate::MapWriter`] builds
/// them) and `body`.
#[inline]
pub fn send_local_response(status: u32, headers: &[u8], body: &[u8]) -> Result<(), Status> {
    let body_data = if body.is_empty() { null() } else { body.as_ptr() };
    // SAFETY: the host only reads `headers.len()` and `body.len()` bytes of live slices; no
    // status details (null, 0) and no gRPC status (-1).
    ok(unsafe {
        proxy_send_local_response(status, null(), 0, body_data, body.len(), headers.as_ptr(), headers.len(), -1)
    })
}

/// A metric's id (Envoy gives the same stat for the same name).
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: the host reads `name.len()` bytes of a live slice and writes one id.
    ok(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain values cross.
    ok(unsafe { proxy_increment_metric(id, offset) })
}

/// The ABI's serialised map with no pairs: the gRPC calls' initial metadata.
const NO_METADATA: [u8; 4] = [0; 4];

/// Starts a unary gRPC call to `cluster`. Its answer reaches `on_grpc_call_response` of the
/// context that made the call, with the returned token.
pub fn grpc_call(cluster: &str, service: &str, method: &str, message: &[u8], timeout: Duration) -> Result<u32, Status> {
    let mut token = 0;
    let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: the host only reads the live slices during the call and writes one token.
    let status = unsafe {
        proxy_grpc_call(
            cluster.as_ptr(),
            cluster.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            NO_METADATA.as_ptr(),
            NO_METADATA.len(),
            message.as_ptr(),
            message.len(),
            millis,
            &mut token,
        )
    };
    ok(status)?;
    context::await_call(token);
    Ok(token)
}

/// Cancels a call whose answer nobody waits for any more.
pub fn cancel_grpc_call(token: u32) -> Result<(), Status> {
    context::forget_call(token);
    // SAFETY: a plain value crosses.
    ok(unsafe { proxy_grpc_cancel(token) })
}

/// Lets a paused request go on to the next filter.
pub fn resume_http_request() -> Result<(), Status> {
    /// `StreamType::HttpRequest`.
    const HTTP_REQUEST: u32 = 0;
    // SAFETY: a plain value crosses.
    ok(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

/// Points the host's stream calls (resume, local reply, header maps) at `context_id`, as a
/// callback that is not the stream's own (a gRPC answer) must before making them.
pub(crate) fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: a plain value crosses.
    ok(unsafe { proxy_set_effective_context(context_id) })
}
