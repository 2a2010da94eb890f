//! Output formats: tables for people, JSON and YAML for scripts.
//!
//! JSON and YAML carry the API's messages in the protobuf JSON mapping with the proto field
//! names (`desired_generation`, not `desiredGeneration`), every field present even at its
//! default, enums by name (`VERDICT_DENY`), timestamps in RFC 3339 and 64-bit integers as
//! numbers. A listing prints one JSON object per line (JSON Lines) or one YAML document per
//! item, so `--follow` streams the same way a listing prints.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::table::Table;

/// `-o`: how a command prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON object per line.
    Json,
    /// One YAML document per item.
    Yaml,
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    // The descriptor set is generated from our own protos at build time: decoding it can only
    // fail if the build is broken, which the tests catch.
    POOL.get_or_init(|| DescriptorPool::decode(palisade_proto::FILE_DESCRIPTOR_SET).unwrap_or_default())
}

/// `message` (of the protobuf type `full_name`, e.g. `palisade.v1.Node`) in the JSON mapping.
pub fn json<M: prost::Message>(full_name: &str, message: &M) -> serde_json::Value {
    let Some(descriptor) = pool().get_message_by_name(full_name) else {
        return serde_json::Value::Null;
    };
    let Ok(dynamic) = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()) else {
        return serde_json::Value::Null;
    };
    let options =
        SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false).stringify_64_bit_integers(false);
    dynamic.serialize_with_options(serde_json::value::Serializer, &options).unwrap_or(serde_json::Value::Null)
}

/// Prints one JSON value in `output`'s machine format (JSON line or YAML document).
pub fn print_value(output: Output, value: &serde_json::Value) {
    match output {
        Output::Yaml => print!("---\n{}", serde_saphyr::to_string(value).unwrap_or_default()),
        Output::Json | Output::Table => println!("{value}"),
    }
}

/// A listing: rows for the table, messages for JSON and YAML (printed as they come).
pub struct Listing {
    output: Output,
    table: Table,
}

impl Listing {
    /// A listing with these table headers.
    pub fn new(output: Output, headers: &[&str]) -> Self {
        Self { output, table: Table::new(headers) }
    }

    /// Whether rows are printed as a table (so callers can skip table-only notes).
    pub fn is_table(&self) -> bool {
        self.output == Output::Table
    }

    /// Adds one item: `row` for the table, `message` (of type `full_name`) otherwise.
    pub fn push<M: prost::Message>(&mut self, full_name: &str, message: &M, row: Vec<String>) {
        match self.output {
            Output::Table => self.table.row(row),
            output => print_value(output, &json(full_name, message)),
        }
    }

    /// Prints the table (JSON and YAML items are already out).
    pub fn finish(self) {
        if self.output == Output::Table {
            print!("{}", self.table.render());
        }
    }
}

#[cfg(test)]
mod tests {
    use palisade_proto::v1;

    use super::*;

    #[test]
    fn messages_map_to_json_with_proto_names_defaults_and_enum_names() {
        let node = v1::Node {
            name: "web-1".into(),
            desired_generation: 7,
            last_seen: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            ..Default::default()
        };
        let value = json("palisade.v1.Node", &node);
        assert_eq!(value["name"], "web-1");
        assert_eq!(value["desired_generation"], 7, "64-bit integers as numbers");
        assert_eq!(value["connected"], false, "defaults are present");
        assert_eq!(value["last_seen"], "2023-11-14T22:13:20Z");
        let event = v1::DecisionEvent { verdict: v1::Verdict::Deny as i32, ..Default::default() };
        assert_eq!(json("palisade.v1.DecisionEvent", &event)["verdict"], "VERDICT_DENY");
        assert_eq!(json("palisade.v1.NoSuchMessage", &event), serde_json::Value::Null);
    }
}
