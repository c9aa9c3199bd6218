//! The few TensorBoard protobuf messages an event file needs, encoded by hand.
//!
//! Field numbers are those of TensorFlow's `event.proto`, `summary.proto`, `tensor.proto`
//! and `tensor_shape.proto`:
//!
//! ```text
//! Event        { double wall_time = 1; int64 step = 2;
//!                oneof what { string file_version = 3; Summary summary = 5;
//!                             SessionLog session_log = 7; } }
//! SessionLog   { SessionStatus status = 1; }                     START = 1
//! Summary      { repeated Value value = 1; }
//! Value        { string tag = 1; SummaryMetadata metadata = 9;
//!                oneof value { float simple_value = 2; Image image = 4;
//!                              TensorProto tensor = 8; } }
//! Image        { int32 height = 1; int32 width = 2; int32 colorspace = 3;   RGB = 3
//!                bytes encoded_image_string = 4; }
//! SummaryMetadata { PluginData plugin_data = 1; }   PluginData { string plugin_name = 1; }
//! TensorProto  { DataType dtype = 1; TensorShapeProto tensor_shape = 2;     DT_STRING = 7
//!                repeated bytes string_val = 8; }
//! ```
//!
//! Writing these by hand (a varint, a fixed-width number or a length-delimited field each)
//! is shorter than a code generator's build step; [`fields`] reads them back for the
//! resume cut and the tests.

/// Protobuf wire types used here.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A message being encoded.
#[derive(Debug, Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn uint(mut self, field: u32, v: u64) -> Self {
        self.key(field, VARINT);
        self.varint(v);
        self
    }

    fn double(mut self, field: u32, v: f64) -> Self {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn float(mut self, field: u32, v: f32) -> Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.key(field, LEN);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    fn message(self, field: u32, m: Msg) -> Self {
        self.bytes(field, &m.0)
    }
}

/// One tagged value of a summary.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// A number on a curve (`simple_value`).
    Scalar(f32),
    /// An RGB image, PNG-encoded.
    Image {
        /// The PNG file's bytes.
        png: &'a [u8],
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Markdown for TensorBoard's text plugin (a scalar string tensor).
    Text(&'a str),
}

/// What an event carries besides its time and step.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// The first event of every file: `"brain.Event:2"`.
    FileVersion(&'a str),
    /// Tagged values at the event's step.
    Summary(&'a [(&'a str, Value<'a>)]),
    /// `SessionLog { status: START }`: readers drop every earlier event whose step is at
    /// least this event's step (what TensorFlow writes when a run restarts from a
    /// checkpoint).
    SessionStart,
}

/// The serialised `Event`.
pub fn event(wall_time: f64, step: u64, body: Body<'_>) -> Vec<u8> {
    let e = Msg::default().double(1, wall_time).uint(2, step);
    let e = match body {
        Body::FileVersion(v) => e.bytes(3, v.as_bytes()),
        Body::Summary(values) => {
            let mut summary = Msg::default();
            for (tag, value) in values {
                summary = summary.message(1, summary_value(tag, value));
            }
            e.message(5, summary)
        }
        Body::SessionStart => e.message(7, Msg::default().uint(1, 1)),
    };
    e.0
}

fn summary_value(tag: &str, value: &Value<'_>) -> Msg {
    let v = Msg::default().bytes(1, tag.as_bytes());
    match *value {
        Value::Scalar(x) => v.float(2, x),
        Value::Image { png, width, height } => v.message(
            4,
            Msg::default()
                .uint(1, u64::from(height))
                .uint(2, u64::from(width))
                .uint(3, 3)
                .bytes(4, png),
        ),
        Value::Text(text) => v
            .message(
                9,
                Msg::default().message(1, Msg::default().bytes(1, b"text")),
            )
            .message(
                8,
                Msg::default()
                    .uint(1, 7)
                    .message(2, Msg::default())
                    .bytes(8, text.as_bytes()),
            ),
    }
}

/// One decoded field of a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1 (a `double` here).
    Fixed64(u64),
    /// Wire type 5 (a `float` here).
    Fixed32(u32),
    /// Wire type 2: a string, bytes or a nested message.
    Bytes(&'a [u8]),
}

/// The top-level fields of a message, `(field number, value)` in order; `None` when the
/// bytes are not a well-formed message.
pub fn fields(mut data: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    fn varint(data: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = data.split_first()?;
            *data = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if data.len() < n {
            return None;
        }
        let (head, rest) = data.split_at(n);
        *data = rest;
        Some(head)
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data)?;
        let field = u32::try_from(key >> 3).ok()?;
        let value = match (key & 7) as u8 {
            VARINT => Field::Varint(varint(&mut data)?),
            FIXED64 => Field::Fixed64(u64::from_le_bytes(take(&mut data, 8)?.try_into().ok()?)),
            FIXED32 => Field::Fixed32(u32::from_le_bytes(take(&mut data, 4)?.try_into().ok()?)),
            LEN => {
                let n = usize::try_from(varint(&mut data)?).ok()?;
                Field::Bytes(take(&mut data, n)?)
            }
            _ => return None,
        };
        out.push((field, value));
    }
    Some(out)
}

/// The `step` of a serialised `Event` (0 when absent, as protobuf defaults it).
pub fn event_step(data: &[u8]) -> Option<u64> {
    let fields = fields(data)?;
    Some(
        fields
            .iter()
            .find_map(|(n, f)| match (n, f) {
                (2, Field::Varint(v)) => Some(*v),
                _ => None,
            })
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_examples() {
        // The protobuf encoding guide's examples: 1 = 01, 150 = 96 01.
        let m = Msg::default().uint(1, 150);
        assert_eq!(m.0, vec![0x08, 0x96, 0x01]);
        let m = Msg::default().uint(2, 1);
        assert_eq!(m.0, vec![0x10, 0x01]);
    }

    #[test]
    fn a_scalar_event_decodes_to_its_parts() {
        let data = event(
            12.5,
            300,
            Body::Summary(&[("train/loss", Value::Scalar(0.25))]),
        );
        let top = fields(&data).unwrap();
        assert_eq!(top[0], (1, Field::Fixed64(12.5f64.to_bits())));
        assert_eq!(top[1], (2, Field::Varint(300)));
        assert_eq!(event_step(&data), Some(300));
        let (5, Field::Bytes(summary)) = top[2] else {
            panic!("no summary: {top:?}")
        };
        let values = fields(summary).unwrap();
        let (1, Field::Bytes(value)) = values[0] else {
            panic!("no value")
        };
        let value = fields(value).unwrap();
        assert_eq!(value[0], (1, Field::Bytes(b"train/loss")));
        assert_eq!(value[1], (2, Field::Fixed32(0.25f32.to_bits())));
    }

    #[test]
    fn text_is_a_string_tensor_for_the_text_plugin() {
        let data = event(0.0, 0, Body::Summary(&[("recipe", Value::Text("hi"))]));
        let top = fields(&data).unwrap();
        let (5, Field::Bytes(summary)) = top[2] else {
            panic!()
        };
        let (1, Field::Bytes(value)) = fields(summary).unwrap()[0] else {
            panic!()
        };
        let value = fields(value).unwrap();
        let Some((_, Field::Bytes(tensor))) = value.iter().find(|(n, _)| *n == 8) else {
            panic!("no tensor: {value:?}")
        };
        let tensor = fields(tensor).unwrap();
        assert!(tensor.contains(&(1, Field::Varint(7))), "DT_STRING");
        assert!(tensor.contains(&(8, Field::Bytes(b"hi"))));
    }
}
