//! `--cpus boot=N[,affinity=auto|0@[2],1@[3-4]...][,emulator=CPULIST][,realtime=fifo:PRIO]`, or just
//! `--cpus N`. CPU lists contain commas, so an item without `=` continues the previous key's value:
//! `affinity=0@[2],1@[3]` and `emulator=0,2` read as one value each.

use super::PlacementError;
use vmm::pinning::CpuSet;

/// Where the vCPU threads go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Not asked: every vCPU keeps the mask Paddock started with.
    Inherit,
    /// vCPU i on the i-th CPU Paddock may use.
    Auto,
    /// vCPU index -> its CPUs; vCPUs not listed keep the allowed set.
    Explicit(Vec<(u8, CpuSet)>),
}

/// Everything `--cpus` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuOptions {
    pub boot: u8,
    pub affinity: Affinity,
    /// CPUs for every thread that is not a vCPU (main, API, serial, spawner, net workers without
    /// a vCPU to follow).
    pub emulator: Option<CpuSet>,
    /// SCHED_FIFO priority for the vCPU threads.
    pub realtime: Option<u8>,
}

const KEYS: [&str; 4] = ["boot", "affinity", "emulator", "realtime"];

fn bad(reason: impl Into<String>) -> PlacementError {
    PlacementError::Syntax(reason.into())
}

/// Splits at commas outside `[...]`, then joins an item without `=` to the previous key's value.
fn split_keys(text: &str) -> Result<Vec<(String, String)>, PlacementError> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(bad(format!("`{text}` closes a `]` it never opened")));
        }
    }
    if depth != 0 {
        return Err(bad(format!("`{text}` leaves a `[` open")));
    }
    items.push(&text[start..]);

    let mut pairs: Vec<(String, String)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let item = item.trim();
        match item.split_once('=') {
            Some((key, value)) => {
                let key = key.trim();
                if !KEYS.contains(&key) {
                    return Err(bad(format!(
                        "unknown key `{key}`; known keys: {}",
                        KEYS.join(", ")
                    )));
                }
                if pairs.iter().any(|(k, _)| k == key) {
                    return Err(bad(format!("key `{key}` given twice")));
                }
                pairs.push((key.to_string(), value.trim().to_string()));
            }
            None if i == 0 => pairs.push(("boot".into(), item.to_string())),
            None => match pairs.last_mut() {
                Some((key, value)) if key == "affinity" || key == "emulator" => {
                    value.push(',');
                    value.push_str(item);
                }
                _ => return Err(bad(format!("`{item}` is not key=value"))),
            },
        }
    }
    Ok(pairs)
}

fn cpu_list(what: &str, text: &str) -> Result<CpuSet, PlacementError> {
    let set = CpuSet::parse(text).map_err(|e| bad(format!("{what}: {e}")))?;
    if set.is_empty() {
        return Err(bad(format!("{what}: the CPU list is empty")));
    }
    Ok(set)
}

/// `auto`, or `V@[LIST],V@[LIST]...` (brackets may be left out when LIST has no comma).
fn parse_affinity(text: &str, boot: u8) -> Result<Affinity, PlacementError> {
    if text == "auto" {
        return Ok(Affinity::Auto);
    }
    let mut pins: Vec<(u8, CpuSet)> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (vcpu, after) = rest
            .split_once('@')
            .ok_or_else(|| {
                bad(format!(
                    "affinity `{rest}`: write auto or VCPU@[CPUS],... (brackets around a list with commas)"
                ))
            })?;
        let vcpu = vcpu.trim();
        let index: u8 = vcpu
            .parse()
            .map_err(|_| bad(format!("affinity: `{vcpu}` is not a vCPU number")))?;
        if index >= boot {
            return Err(bad(format!(
                "affinity names vCPU {index} but boot={boot} has vCPUs 0 to {}",
                boot.saturating_sub(1)
            )));
        }
        let (list, next) = match after.strip_prefix('[') {
            Some(inner) => {
                let (list, next) = inner
                    .split_once(']')
                    .ok_or_else(|| bad(format!("affinity: `{after}` leaves a `[` open")))?;
                if !next.is_empty() && !next.starts_with(',') {
                    return Err(bad(format!(
                        "affinity: `{next}` follows a `]`; separate entries with commas"
                    )));
                }
                (list, next.strip_prefix(',').unwrap_or(next))
            }
            // Without brackets the list ends at the next comma (write [0,2] for more).
            None => after.split_once(',').unwrap_or((after, "")),
        };
        let cpus = cpu_list(&format!("affinity of vCPU {index}"), list)?;
        if pins.iter().any(|(v, _)| *v == index) {
            return Err(bad(format!("affinity gives vCPU {index} twice")));
        }
        pins.push((index, cpus));
        rest = next.trim_start();
    }
    if pins.is_empty() {
        return Err(bad("affinity is empty: write auto or VCPU@[CPUS],..."));
    }
    pins.sort_by_key(|(v, _)| *v);
    Ok(Affinity::Explicit(pins))
}

/// `fifo:PRIO`, PRIO from 1 to 99 as SCHED_FIFO takes it.
fn parse_realtime(text: &str) -> Result<u8, PlacementError> {
    let prio = text
        .strip_prefix("fifo:")
        .ok_or_else(|| bad(format!("realtime=`{text}`: write realtime=fifo:PRIO")))?;
    match prio.parse::<u8>() {
        Ok(p) if (1..=99).contains(&p) => Ok(p),
        _ => Err(bad(format!(
            "realtime=fifo:{prio}: the priority is a number from 1 to 99"
        ))),
    }
}

impl CpuOptions {
    pub fn parse(text: &str) -> Result<Self, PlacementError> {
        let pairs = split_keys(text)?;
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let boot_text = get("boot").ok_or_else(|| bad("no boot= vCPU count"))?;
        let boot: u8 = boot_text.parse().map_err(|_| {
            bad(format!(
                "boot=`{boot_text}`: give a whole number of vCPUs from 1 to 255, e.g. --cpus 2"
            ))
        })?;
        let affinity = match get("affinity") {
            None => Affinity::Inherit,
            Some(a) => parse_affinity(a, boot)?,
        };
        let emulator = get("emulator")
            .map(|e| cpu_list("emulator", e))
            .transpose()?;
        let realtime = get("realtime").map(parse_realtime).transpose()?;
        Ok(Self {
            boot,
            affinity,
            emulator,
            realtime,
        })
    }

    /// Whether any thread is to be placed (then Paddock reads what CPUs it may use).
    pub fn places_threads(&self) -> bool {
        self.affinity != Affinity::Inherit || self.emulator.is_some() || self.realtime.is_some()
    }
}
