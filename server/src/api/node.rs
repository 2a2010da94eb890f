//! `NodeService`.

use palisade_proto::v1::{self, node_service_server::NodeService};
use tonic::{Request, Response, Status};

use super::{decode_token, encode_token, page_size};
use crate::{error::ApiError, store::Store, validate};

/// Node reads over the store.
#[derive(Debug, Clone)]
pub struct NodeApi {
    store: Store,
}

impl NodeApi {
    /// Serves nodes from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        validate::selector("label_selector", &request.label_selector).map_err(ApiError::Invalid)?;
        let after = decode_token("node", &request.page_token)?;
        let (nodes, more) = self.store.list_nodes(&request.label_selector, after.as_deref(), limit).await?;
        let next_page_token = match (more, nodes.last()) {
            (true, Some(last)) => encode_token("node", &last.name),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListNodesResponse { nodes, next_page_token }))
    }

    async fn get_node(&self, request: Request<v1::GetNodeRequest>) -> Result<Response<v1::GetNodeResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(ApiError::invalid("name", "must not be empty").into());
        }
        let node = self.store.get_node(&request.name).await?;
        Ok(Response::new(v1::GetNodeResponse { node: Some(node) }))
    }
}
