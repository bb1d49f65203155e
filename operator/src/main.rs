//! placeholder main
fn main() {
    print!("{}", coral_operator::crd::coral_cluster_crd_yaml());
}
