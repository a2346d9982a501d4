//! All four workers in one process (`make run`, small deployments).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    memberline_workers::main_for(&memberline_schema::topology::Worker::ALL).await
}
