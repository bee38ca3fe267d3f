//! The machine frame allocator, with the placement policies of the design:
//! contiguous (first fit), interleaved (every other free frame first) and
//! shuffled (random extents), so that pseudo-physical contiguity is not
//! machine contiguity: the situation Xen-SWIOTLB exists for.

use abi::Mfn;

/// How frames are handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Lowest free frames first.
    Contiguous,
    /// Every other frame, so that no two consecutive pages are adjacent.
    Interleaved,
    /// Random extents (single pages for small requests), in random order.
    Shuffled,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "contiguous" => Ok(Policy::Contiguous),
            "interleaved" => Ok(Policy::Interleaved),
            "shuffled" => Ok(Policy::Shuffled),
            _ => Err(format!(
                "unknown frame policy {s:?} (contiguous, interleaved, shuffled)"
            )),
        }
    }
}

/// Free and used machine frames.
pub struct Frames {
    used: Vec<bool>,
    free: u64,
    policy: Policy,
    rng: u64,
}

impl Frames {
    /// `total` frames, all free.
    pub fn new(total: u64, policy: Policy, seed: u64) -> Frames {
        Frames {
            used: vec![false; total as usize],
            free: total,
            policy,
            rng: seed | 1,
        }
    }

    /// Frames not allocated.
    pub fn free_count(&self) -> u64 {
        self.free
    }

    /// Frames in all.
    pub fn total(&self) -> u64 {
        self.used.len() as u64
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn take(&mut self, i: usize, out: &mut Vec<Mfn>) {
        self.used[i] = true;
        self.free -= 1;
        out.push(Mfn(i as u64));
    }

    /// `count` frames placed by the policy, or `None` if too few are free.
    pub fn alloc(&mut self, count: u64) -> Option<Vec<Mfn>> {
        if count > self.free {
            return None;
        }
        let n = self.used.len();
        let mut out = Vec::with_capacity(count as usize);
        match self.policy {
            Policy::Contiguous => {
                for i in 0..n {
                    if out.len() as u64 == count {
                        break;
                    }
                    if !self.used[i] {
                        self.take(i, &mut out);
                    }
                }
            }
            Policy::Interleaved => {
                for pass in 0..2 {
                    for i in (pass..n).step_by(2) {
                        if out.len() as u64 == count {
                            break;
                        }
                        if !self.used[i] {
                            self.take(i, &mut out);
                        }
                    }
                }
            }
            Policy::Shuffled => {
                // Extents of 1 page for small requests, up to 512 pages
                // (2 MiB) for large ones, so big domains stay within
                // vm.max_map_count.
                let max_extent = (count / 64).clamp(1, 512) as usize;
                while (out.len() as u64) < count {
                    let want = (count as usize - out.len()).min(max_extent);
                    let start = (self.next_random() % n as u64) as usize;
                    // From a random point, the next free frame, then as many
                    // following free frames as the extent wants.
                    let Some(first) = (0..n).map(|k| (start + k) % n).find(|&i| !self.used[i])
                    else {
                        break;
                    };
                    let mut i = first;
                    while out.len() < count as usize && i < n && !self.used[i] && i - first < want {
                        self.take(i, &mut out);
                        i += 1;
                    }
                }
            }
        }
        Some(out)
    }

    /// `count` machine-contiguous frames all below `limit`, or `None`.
    pub fn alloc_contiguous_below(&mut self, count: u64, limit: u64) -> Option<Mfn> {
        let end = (limit.min(self.total())) as usize;
        let count = count as usize;
        let mut run = 0;
        for i in 0..end {
            run = if self.used[i] { 0 } else { run + 1 };
            if run == count {
                let first = i + 1 - count;
                let mut out = Vec::new();
                for j in first..=i {
                    self.take(j, &mut out);
                }
                return Some(Mfn(first as u64));
            }
        }
        None
    }

    /// Gives frames back.
    pub fn free(&mut self, frames: &[Mfn]) {
        for m in frames {
            if let Some(u) = self.used.get_mut(m.0 as usize) {
                if *u {
                    *u = false;
                    self.free += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(frames: &[Mfn]) -> usize {
        1 + frames.windows(2).filter(|w| w[1].0 != w[0].0 + 1).count()
    }

    #[test]
    fn each_policy_hands_out_distinct_frames_and_takes_them_back() {
        for policy in [Policy::Contiguous, Policy::Interleaved, Policy::Shuffled] {
            let mut f = Frames::new(1000, policy, 42);
            let a = f.alloc(300).unwrap();
            let b = f.alloc(700).unwrap();
            let mut all: Vec<u64> = a.iter().chain(&b).map(|m| m.0).collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 1000, "{policy:?}");
            assert!(f.alloc(1).is_none());
            f.free(&a);
            assert_eq!(f.free_count(), 300);
        }
    }

    #[test]
    fn shuffled_small_domains_are_not_machine_contiguous() {
        let mut f = Frames::new(4096, Policy::Shuffled, 7);
        let a = f.alloc(64).unwrap();
        assert!(runs(&a) > 32, "64 pages in {} runs", runs(&a));
        let mut c = Frames::new(4096, Policy::Contiguous, 7);
        assert_eq!(runs(&c.alloc(64).unwrap()), 1);
        let mut i = Frames::new(4096, Policy::Interleaved, 7);
        assert_eq!(runs(&i.alloc(64).unwrap()), 64);
    }

    #[test]
    fn large_shuffled_domains_come_in_extents() {
        let mut f = Frames::new(1 << 18, Policy::Shuffled, 9);
        let a = f.alloc(1 << 16).unwrap();
        assert!(runs(&a) < 2000, "{} runs", runs(&a));
    }

    #[test]
    fn contiguous_below_a_limit_respects_it() {
        let mut f = Frames::new(100, Policy::Contiguous, 1);
        f.alloc(10).unwrap();
        assert_eq!(f.alloc_contiguous_below(5, 20), Some(Mfn(10)));
        assert_eq!(f.alloc_contiguous_below(10, 20), None);
    }
}
