//! The host-call floor for `cargo xtask bench envoy`: exactly the host calls Portcullis makes
//! for one class of request, in the same order and through the same calls
//! (`portcullis-proxy-abi`), with every answer precomputed and no logic
//! between them. Portcullis over the floor is what its own code costs; the floor over Envoy's
//! native filters is what the ABI costs. `no_std`, as the filter is, and on the same heap.

#![no_std]

extern crate alloc;

use alloc::borrow::ToOwned;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use portcullis_proxy_abi::{self as abi, Action, BufferType, HttpContext, LogLevel, MapType, RootContext};

portcullis_proxy_abi::main!(|| -> Box<dyn RootContext> { Box::new(Root::default()) });

/// The calls for one class of request, with their bytes prepared once. The bench writes it
/// as lines, one call each (nothing here needs a JSON parser):
///
/// ```text
/// property source\0address        a property read in the request phase (`\0` joins segments)
/// clock                            the clock read (limited tiers)
/// shared portcullis/3 16 write     a shared-data key read, and written back with its CAS
/// reply 429                        a local reply instead of forwarding, with …
/// reply-header retry-after: 12     … each of its headers, and …
/// reply-body {"error": …}          … its body
/// response-remove x-powered-by     a response header removed (forwards), or …
/// response-set x-frame-options: DENY  … set, one host call each, in the filter's order
/// ```
#[derive(Default)]
struct Script {
    properties: Vec<Vec<u8>>,
    clock: bool,
    /// Key, value, and whether it is written back.
    shared_data: Option<(Vec<u8>, Vec<u8>, bool)>,
    reply: Option<Reply>,
    /// The response header edits: a name and its new value, or `None` to remove it.
    response: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

#[derive(Default)]
struct Reply {
    status: u32,
    headers: Vec<(String, String)>,
    /// `headers` serialised, once the script is read.
    serialised: Vec<u8>,
    body: String,
}

impl Script {
    fn parse(text: &str) -> Result<Self, String> {
        let mut script = Self::default();
        let header = |rest: &str| {
            rest.split_once(": ").map(|(n, v)| (n.to_owned(), v.to_owned())).ok_or(format!("no `: ` in {rest:?}"))
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            match word {
                "property" => script.properties.push(rest.replace("\\0", "\0").into_bytes()),
                "clock" => script.clock = true,
                "shared" => {
                    let mut parts = rest.split(' ');
                    let key = parts.next().unwrap_or_default().as_bytes().to_vec();
                    let len = parts.next().and_then(|n| n.parse().ok()).ok_or(format!("shared: {rest:?}"))?;
                    script.shared_data = Some((key, vec![0; len], parts.next() == Some("write")));
                }
                "reply" => {
                    let status = rest.parse().map_err(|_| format!("reply: {rest:?}"))?;
                    script.reply = Some(Reply { status, ..Reply::default() });
                }
                "reply-header" => script.reply.as_mut().ok_or("reply-header before reply")?.headers.push(header(rest)?),
                "reply-body" => script.reply.as_mut().ok_or("reply-body before reply")?.body = rest.to_owned(),
                "response-remove" => script.response.push((rest.as_bytes().to_vec(), None)),
                "response-set" => {
                    let (name, value) = header(rest)?;
                    script.response.push((name.into_bytes(), Some(value.into_bytes())));
                }
                other => return Err(format!("unknown line {other:?}")),
            }
        }
        if let Some(reply) = &mut script.reply {
            reply.serialised = serialise(&reply.headers);
        }
        Ok(script)
    }
}

fn serialise(pairs: &[(String, String)]) -> Vec<u8> {
    let bytes = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
    let mut writer = abi::MapWriter::new(pairs.len(), bytes);
    for (name, value) in pairs {
        writer.push(name.as_bytes(), value.as_bytes());
    }
    writer.finish()
}

#[derive(Default)]
struct Root {
    script: Option<Rc<Script>>,
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten();
        let config = config.unwrap_or_default();
        match core::str::from_utf8(&config).map_err(|e| e.to_string()).and_then(Script::parse) {
            Ok(script) => {
                self.script = Some(Rc::new(script));
                true
            }
            Err(err) => {
                abi::log(LogLevel::Critical, &format!("floor script: {err}"));
                false
            }
        }
    }

    fn create_http_context(&self) -> Option<Box<dyn HttpContext>> {
        let script = self.script.clone()?;
        Some(Box::new(Floor { script, replied: false }))
    }
}

struct Floor {
    script: Rc<Script>,
    replied: bool,
}

impl HttpContext for Floor {
    fn on_request_headers(&mut self) -> Action {
        let script = &self.script;
        drop(abi::get_map(MapType::HttpRequestHeaders));
        for path in &script.properties {
            drop(abi::property(path));
        }
        if script.clock {
            let _ = abi::current_time_nanos();
        }
        if let Some((key, value, write)) = &script.shared_data {
            let cas = abi::get_shared_data(key).map_or(0, |(_, cas)| cas);
            if *write {
                let _ = abi::set_shared_data(key, value, cas);
            }
        }
        let Some(reply) = &script.reply else {
            return Action::Continue;
        };
        let _ = abi::send_local_response(reply.status, &reply.serialised, reply.body.as_bytes());
        self.replied = true;
        Action::Pause
    }

    fn on_response_headers(&mut self) -> Action {
        if self.replied {
            return Action::Continue;
        }
        for (name, value) in &self.script.response {
            let _ = match value {
                Some(value) => abi::replace_map_value(MapType::HttpResponseHeaders, name, value),
                None => abi::remove_map_value(MapType::HttpResponseHeaders, name),
            };
        }
        Action::Continue
    }
}
