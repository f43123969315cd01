//! The order in which the agent tries the server nodes of `OUTPOST_SERVER_URL`: a pure state
//! machine, so that its rules are tested without a network.

/// The order in which the agent tries its server nodes (CONTRACT.md §13).
///
/// It starts at a random node, so a fleet spreads over the cluster, and goes round the list
/// from there: a failed attempt, or a session that ended, moves it to the next node. While
/// some node has not failed yet the move is immediate: when a node dies its agents try the
/// others at once, rather than waiting out a backoff for a node that is gone. Once every node
/// has failed in a row, the network is down or the whole cluster is, and each further attempt
/// waits for the usual backoff (and still moves on).
///
/// The row is broken by a connection that stayed up long enough to count as healthy (the
/// rule that resets the backoff), not by any connection: a cluster whose nodes accept and
/// then drop the agent must not be hammered in a loop. It is broken too by a node that
/// answered with a refusal (a key refused with 401): the network works, and the caller waits
/// on its own slower schedule, since every node refuses a key alike. With one URL every
/// failure is a whole pass, so the agent behaves as with a single server.
pub struct Rotation {
    len: usize,
    current: usize,
    /// How far the next node is from the current one: coprime with `len`, so that a pass
    /// visits every node once. Random per agent, so that the agents of a node that dies spread
    /// over the others instead of all moving to the one listed after it.
    stride: usize,
    /// Nodes that failed in a row, the current one included.
    failed: usize,
}

impl Rotation {
    /// A rotation over `len` nodes (at least one) that starts at `start`.
    pub fn new(len: usize, start: usize) -> Self {
        let len = len.max(1);
        Self {
            len,
            current: start % len,
            stride: 1,
            failed: 0,
        }
    }

    /// Starts at `first` when given (then in list order), else at a random node with a
    /// random stride.
    pub fn starting_at(len: usize, first: Option<usize>) -> Self {
        match first {
            Some(start) => Self::new(len, start),
            None => {
                let mut rotation = Self::new(len, rand::random_range(0..len.max(1)));
                let strides: Vec<usize> = (1..rotation.len)
                    .filter(|s| gcd(*s, rotation.len) == 1)
                    .collect();
                if !strides.is_empty() {
                    rotation.stride = strides[rand::random_range(0..strides.len())];
                }
                rotation
            }
        }
    }

    /// The node to try now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The current node could not be reached, or its session ended: moves to the next one.
    /// Returns whether to back off before trying it (every node has failed in a row).
    pub fn failed(&mut self) -> bool {
        self.failed = self.failed.saturating_add(1);
        self.advance();
        self.failed >= self.len
    }

    /// The current node answered, but refused: moves to the next one, starting a new row.
    pub fn refused(&mut self) {
        self.failed = 0;
        self.advance();
    }

    /// A connection stayed up long enough to count as healthy: starts a new row.
    pub fn healthy(&mut self) {
        self.failed = 0;
    }

    fn advance(&mut self) {
        self.current = (self.current + self.stride) % self.len;
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes a rotation tries after each failure, and whether it waits first.
    fn tries(rotation: &mut Rotation, failures: usize) -> Vec<(usize, bool)> {
        (0..failures)
            .map(|_| {
                let wait = rotation.failed();
                (rotation.current(), wait)
            })
            .collect()
    }

    #[test]
    fn a_rotation_goes_round_from_its_start_and_waits_only_after_a_whole_pass() {
        let mut rotation = Rotation::new(3, 1);
        assert_eq!(rotation.current(), 1);
        // Nodes 1, 2 and 0 fail: the moves to 2 and 0 are immediate, the move to 1 again
        // comes after a backoff, and so does every move after it until the row is broken.
        assert_eq!(
            tries(&mut rotation, 5),
            [(2, false), (0, false), (1, true), (2, true), (0, true)]
        );
        // A healthy connection to 0 ends, then the others are tried at once.
        rotation.healthy();
        assert_eq!(tries(&mut rotation, 3), [(1, false), (2, false), (0, true)]);
    }

    #[test]
    fn a_refusal_moves_on_and_starts_a_new_row() {
        let mut rotation = Rotation::new(2, 0);
        assert_eq!(tries(&mut rotation, 2), [(1, false), (0, true)]);
        rotation.refused();
        assert_eq!(rotation.current(), 1);
        assert_eq!(tries(&mut rotation, 2), [(0, false), (1, true)]);
    }

    #[test]
    fn one_server_waits_after_every_failure_as_before() {
        let mut rotation = Rotation::new(1, 0);
        assert_eq!(tries(&mut rotation, 3), [(0, true), (0, true), (0, true)]);
        rotation.healthy();
        assert_eq!(tries(&mut rotation, 1), [(0, true)]);
    }

    #[test]
    fn a_rotation_starts_where_it_is_told_or_anywhere() {
        assert_eq!(Rotation::starting_at(3, Some(2)).current(), 2);
        assert_eq!(Rotation::new(3, 7).current(), 1);
        let mut seen = [false; 3];
        for _ in 0..300 {
            seen[Rotation::starting_at(3, None).current()] = true;
        }
        assert_eq!(seen, [true; 3], "a random start reaches every node");
    }

    /// Agents whose node dies spread over the others: from one start, some move to each of
    /// them first; and whatever the stride, a pass visits every node once before backing off.
    #[test]
    fn the_agents_of_a_dead_node_spread_over_the_others() {
        let mut first_moves = std::collections::HashSet::new();
        for _ in 0..300 {
            let mut rotation = Rotation::starting_at(4, None);
            let start = rotation.current();
            rotation.failed();
            first_moves.insert((rotation.current() + 4 - start) % 4);
            let mut rotation = Rotation::starting_at(4, None);
            let mut visited = vec![rotation.current()];
            for _ in 0..3 {
                assert!(!rotation.failed());
                visited.push(rotation.current());
            }
            visited.sort_unstable();
            assert_eq!(visited, [0, 1, 2, 3], "one pass, every node once");
            assert!(rotation.failed(), "back off after a whole pass");
        }
        assert_eq!(
            first_moves,
            [1, 3].into_iter().collect(),
            "strides coprime with 4, both used"
        );
    }
}
