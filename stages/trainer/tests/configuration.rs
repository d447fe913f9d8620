//! The trainer's part of the configuration reference (docs/src/reference/configuration.md)
//! against its options: every default stated is the one taken, every option has its row.

#[test]
fn the_reference_states_the_trainers_defaults() {
    let expected = codelupe_trainer::stage::TrainerOptions::default();
    codelupe_testkit::reference::check(Some("Trainer"), "{}", &expected);
}
