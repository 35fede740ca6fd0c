//! The runtime layer (tokio): graceful shutdown, checkpointed batches, a
//! durable work queue and Kubernetes health endpoints.
