//! Canonical protobuf JSON (the mapping grpcurl uses) for any `lb.v1` message,
//! driven by the API's own descriptors, so `lbctl -o json` prints exactly what
//! `grpcurl` would and accepts the same shape back.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("unknown message type {0}")]
    UnknownType(String),
    #[error("descriptor set: {0}")]
    Descriptors(String),
    #[error("protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

fn descriptor(full_name: &str) -> Result<MessageDescriptor, JsonError> {
    static POOL: OnceLock<Result<DescriptorPool, prost_reflect::DescriptorError>> = OnceLock::new();
    let pool = POOL
        .get_or_init(|| DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET))
        .as_ref()
        .map_err(|e| JsonError::Descriptors(e.to_string()))?;
    pool.get_message_by_name(full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.to_string()))
}

/// Renders `msg` (of protobuf type `full_name`, e.g. `lb.v1.Service`) as JSON.
pub fn to_json<M: prost::Message>(
    msg: &M,
    full_name: &str,
) -> Result<serde_json::Value, JsonError> {
    let dynamic = DynamicMessage::decode(descriptor(full_name)?, msg.encode_to_vec().as_slice())?;
    let options = SerializeOptions::new().skip_default_fields(true);
    Ok(dynamic.serialize_with_options(serde_json::value::Serializer, &options)?)
}

/// Parses protobuf JSON into `M` (of protobuf type `full_name`).
pub fn from_json<M: prost::Message + Default>(text: &str, full_name: &str) -> Result<M, JsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor(full_name)?, &mut de)?;
    de.end()?;
    Ok(M::decode(dynamic.encode_to_vec().as_slice())?)
}

#[cfg(test)]
mod tests {
    use crate::pb;

    #[test]
    fn service_json_round_trip() {
        let svc = pb::Service {
            name: "web".into(),
            virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address: "10.0.0.1".into(),
                port: 80,
                protocol: "tcp".into(),
            })),
            ..Default::default()
        };
        let json = super::to_json(&svc, "lb.v1.Service").unwrap();
        assert_eq!(json["endpoint"]["port"], 80);
        let back: pb::Service = super::from_json(&json.to_string(), "lb.v1.Service").unwrap();
        assert_eq!(back, svc);
    }
}
