//! The notifier worker.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    memberline_workers::main_for(&[memberline_schema::topology::Worker::Notifier]).await
}
