//! `delete-topology`: deletes every queue and exchange of the configured topology (the
//! `MEMBERLINE__AMQP__PREFIX` a browser test ran the system with) from the test broker
//! (`TEST_AMQP_URL`), so that test runs leave nothing behind.

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let settings = memberline_platform::settings::Settings::load()?;
    memberline_tests::broker::delete_topology_now(settings.topology()).await;
    Ok(())
}
