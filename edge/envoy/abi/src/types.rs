//! The ABI's enumerations, only the values Portcullis passes or reads.

/// A host call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    Empty,
    CasMismatch,
    InternalFailure,
    Unimplemented,
    /// A status ABI 0.2.1 does not define.
    Other(u32),
}

impl Status {
    pub fn from_raw(status: u32) -> Self {
        match status {
            0 => Self::Ok,
            1 => Self::NotFound,
            2 => Self::BadArgument,
            3 => Self::SerializationFailure,
            4 => Self::ParseFailure,
            7 => Self::Empty,
            8 => Self::CasMismatch,
            10 => Self::InternalFailure,
            12 => Self::Unimplemented,
            other => Self::Other(other),
        }
    }

    /// The status as the ABI names it, for logs (written without `core::fmt`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "Ok",
            Self::NotFound => "NotFound",
            Self::BadArgument => "BadArgument",
            Self::SerializationFailure => "SerializationFailure",
            Self::ParseFailure => "ParseFailure",
            Self::Empty => "Empty",
            Self::CasMismatch => "CasMismatch",
            Self::InternalFailure => "InternalFailure",
            Self::Unimplemented => "Unimplemented",
            Self::Other(_) => "a status ABI 0.2.1 does not define",
        }
    }
}

/// What the host does with the stream after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    HttpRequestHeaders = 0,
    HttpResponseHeaders = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferType {
    GrpcReceiveBuffer = 5,
    PluginConfiguration = 7,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
}
