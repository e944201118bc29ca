//! The one clock of this process: every repository the commands open reads its time here, so
//! snapshot times, manifest times, sessions and index blobs all agree.

use std::sync::OnceLock;

use kmover_repo::Clock;
use kmover_repo::repository::system_clock;

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// Chooses the clock before any command runs. Only a build with the `testing` feature may take
/// it from kopia's fake-time server (`KOPIA_FAKE_CLOCK_ENDPOINT`); a bad endpoint is an error.
pub fn install() -> anyhow::Result<()> {
    #[cfg(feature = "testing")]
    if let Some(fake) = crate::fake_clock::from_env()? {
        // Only the first install counts; main calls this once.
        let _ = CLOCK.set(fake);
    }
    Ok(())
}

/// The installed clock, or the system clock.
pub fn clock() -> Clock {
    CLOCK.get().cloned().unwrap_or_else(system_clock)
}
