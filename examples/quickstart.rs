use agentwal::{Effect, Journal, JournalOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One directory per agent process; it is created if missing (0700).
    let dir = std::env::temp_dir().join(format!("orders-{}.journal", std::process::id()));
    let journal = Journal::open(&dir, JournalOptions::default())?;

    let mut unit = journal.begin("order-42", "order", &serde_json::json!({"sku": "A-1"}))?;
    // A model call: recorded, so a resumed unit does not pay for it again.
    let answer: String = unit.run(Effect::retry_same_key("llm"), |_ctx| {
        Ok::<_, std::io::Error>("ship it".to_string())
    })?;
    // A message: the receiver de-duplicates on ctx.key(), so a retry after a crash is harmless.
    let sent: bool = unit.run(Effect::retry_same_key("notify"), |ctx| {
        println!("send {answer:?} with idempotency key {}", ctx.key());
        Ok::<_, std::io::Error>(true)
    })?;
    assert!(sent);
    unit.commit()?;

    journal.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
