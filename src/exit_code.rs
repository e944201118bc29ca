//! Process exit codes (docs/exit-codes.md). kopia exits 1 on any error and scripts written for it
//! rely on that; the only other codes belong to the probe, whose callers must tell "no snapshot"
//! from "could not look".

/// The command did what it was asked.
pub const SUCCESS: u8 = 0;
/// An error; for `snapshot exists`: no snapshot of that source.
pub const FAILURE: u8 = 1;
/// The command line is invalid (clap's own code).
pub const USAGE: u8 = 2;
/// `snapshot exists` could not find out (repository unreachable, wrong password, …).
pub const UNDECIDED: u8 = 3;

/// Ends the program with `code`, its reason already reported.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// The code for the result of a command: an [`Exit`] anywhere in the error chain wins.
pub fn for_result(result: &anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => SUCCESS,
        Err(e) => e
            .chain()
            .find_map(|cause| cause.downcast_ref::<Exit>())
            .map_or(FAILURE, |exit| exit.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_in_the_chain_sets_the_code() {
        assert_eq!(for_result(&Ok(())), SUCCESS);
        assert_eq!(for_result(&Err(anyhow::anyhow!("boom"))), FAILURE);
        let wrapped = Err(anyhow::Error::new(Exit(UNDECIDED)).context("probe"));
        assert_eq!(for_result(&wrapped), UNDECIDED);
        assert_eq!(USAGE, 2);
    }
}
