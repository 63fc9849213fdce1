//! Guest code assembled with iced-x86: an optional POST code, a message on COM1, the checks each
//! boot format makes on what the VMM handed over, and one way of ending the run.
//!
//! The code never uses a stack (no boot protocol promises one) and never spins without bound: the
//! wait for the UART has a budget, and after the ending instruction the vCPU halts with interrupts
//! off, so a VMM that misses the ending shows up as a timeout, not as a busy host.

use super::TinyGuestError;
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

/// COM1 registers the guest touches.
const COM1_DATA: u16 = 0x3f8;
const COM1_LSR: u16 = 0x3fd;
const LSR_THR_EMPTY: i32 = 0x20;
/// LSR reads before a byte is sent anyway: a VMM whose UART never says "empty" loses bytes
/// visibly instead of hanging the guest.
const UART_POLL_BUDGET: u32 = 10_000;

/// Port-I/O constants of the devices the endings use (the values of `devices::legacy`).
const DEBUG_PORT: i32 = 0x80;
const I8042_COMMAND_PORT: i32 = 0x64;
const I8042_RESET_COMMAND: u32 = 0xfe;
const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
const ACPI_RESET_PORT: u16 = 0x602;
const ACPI_RESET_VALUE: u32 = 0x01;
const ACPI_S5_SLP_TYP: u32 = 5;
const ACPI_SLP_EN: u32 = 1 << 5;

/// `hvm_start_info.magic` of the PVH boot protocol.
pub const PVH_START_INFO_MAGIC: u32 = 0x336e_c578;
/// Offsets in Linux's `boot_params` (the zero page).
const BOOT_PARAMS_E820_ENTRIES: i32 = 0x1e8;
const BOOT_PARAMS_HDR_MAGIC: i32 = 0x202;
const SETUP_HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"

/// What the guest reports after its message, one line per check, each line ending in "ok" or
/// "BAD". The tests compare against these exact strings.
pub const REPORT_E820_OK: &str = "boot_params e820 ok\n";
pub const REPORT_E820_BAD: &str = "boot_params e820 BAD: no entries\n";
pub const REPORT_SETUP_HEADER_OK: &str = "boot_params setup header ok\n";
pub const REPORT_SETUP_HEADER_BAD: &str = "boot_params setup header BAD: no HdrS\n";
pub const REPORT_PVH_MAGIC_OK: &str = "pvh start_info magic ok\n";
pub const REPORT_PVH_MAGIC_BAD: &str = "pvh start_info magic BAD\n";
/// Printed by code that only runs when a VMM enters the image somewhere it should not.
pub const REPORT_WRONG_ENTRY: &str = "tiny guest: WRONG ENTRY POINT\n";

/// How the guest ends the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// ACPI S5 through the sleep control register: `paddock` exits 0.
    AcpiPowerOff,
    /// The i8042 CPU-reset command.
    I8042Reset,
    /// The ACPI reset register.
    AcpiReset,
    /// `ud2` with a zero-limit IDT: #UD, #GP, #DF, then a shutdown (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// `int3` in kernel mode: an internal error on kvm_pvm, a triple fault elsewhere (no IDT).
    Int3,
    /// None: the guest halts with interrupts off for good, and only a stop from outside (a
    /// signal to `paddock`) ends the run.
    Halt,
}

/// A guest program, independent of the boot format that carries it.
#[derive(Clone, Debug)]
pub struct Program {
    /// Written to port 0x80 first, when set.
    pub post_code: Option<u8>,
    /// Sent to COM1 byte for byte.
    pub message: Vec<u8>,
    pub ending: Ending,
}

impl Program {
    pub fn new(message: impl Into<Vec<u8>>, ending: Ending) -> Self {
        Self {
            post_code: None,
            message: message.into(),
            ending,
        }
    }

    pub fn with_post_code(mut self, code: u8) -> Self {
        self.post_code = Some(code);
        self
    }
}

/// What the VMM is expected to have handed over at a 64-bit entry, checked by the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongModeChecks {
    /// vmlinux ELF: RSI points at boot_params with an e820 map.
    BootParams,
    /// bzImage: the same, plus the setup header copied into boot_params.
    BootParamsWithSetupHeader,
}

/// Lines a program prints after its message for the given checks when all pass.
pub fn long_mode_report(checks: LongModeChecks) -> String {
    match checks {
        LongModeChecks::BootParams => REPORT_E820_OK.to_string(),
        LongModeChecks::BootParamsWithSetupHeader => {
            format!("{REPORT_E820_OK}{REPORT_SETUP_HEADER_OK}")
        }
    }
}

/// Assembles `program` for a 64-bit entry (long mode, paging on, RSI = boot_params). The code is
/// position independent (RIP-relative data), so `ip` only has to be where it will run for the
/// disassembly to make sense.
pub fn assemble_long_mode(
    program: &Program,
    checks: LongModeChecks,
    ip: u64,
) -> Result<Vec<u8>, TinyGuestError> {
    build(Mode::Long, ip, |g| {
        // Keep boot_params: the print loops use RSI.
        g.a.mov(r15, rsi)?;
        g.prologue(program)?;
        g.check_nonzero_byte(
            r15 + BOOT_PARAMS_E820_ENTRIES,
            REPORT_E820_OK,
            REPORT_E820_BAD,
        )?;
        if checks == LongModeChecks::BootParamsWithSetupHeader {
            g.check_dword(
                r15 + BOOT_PARAMS_HDR_MAGIC,
                SETUP_HEADER_MAGIC,
                REPORT_SETUP_HEADER_OK,
                REPORT_SETUP_HEADER_BAD,
            )?;
        }
        g.end(program.ending)
    })
}

/// Assembles `program` for the PVH 32-bit entry (protected mode, paging off, EBX = start_info).
/// The code uses absolute addresses: it must run at `ip`.
pub fn assemble_pvh(program: &Program, ip: u32) -> Result<Vec<u8>, TinyGuestError> {
    build(Mode::Protected, u64::from(ip), |g| {
        g.prologue(program)?;
        g.check_dword(
            ebx + 0,
            PVH_START_INFO_MAGIC,
            REPORT_PVH_MAGIC_OK,
            REPORT_PVH_MAGIC_BAD,
        )?;
        g.end(program.ending)
    })
}

/// Code for an entry point the VMM must not use: it says so on COM1 and resets, so the mistake
/// shows up as a named failure. `long` selects 64-bit code (position independent) or 32-bit code
/// (which must run at `ip`).
pub fn assemble_wrong_entry(long: bool, ip: u64) -> Result<Vec<u8>, TinyGuestError> {
    let mode = if long { Mode::Long } else { Mode::Protected };
    build(mode, ip, |g| {
        g.a.cli()?;
        g.print(REPORT_WRONG_ENTRY.as_bytes())?;
        g.end(Ending::I8042Reset)
    })
}

/// Runs `body` on an emitter and assembles at `ip`. 32-bit code has no IP-relative addressing, so
/// it is emitted twice: the first pass finds where the data blobs land, the second uses those
/// addresses (every address operand has a fixed 32-bit encoding, so the layout does not move).
fn build(
    mode: Mode,
    ip: u64,
    body: impl Fn(&mut Emitter) -> Result<(), TinyGuestError>,
) -> Result<Vec<u8>, TinyGuestError> {
    let mut first = Emitter::new(mode, Vec::new())?;
    body(&mut first)?;
    let (code, addrs) = first.assemble(ip)?;
    if mode == Mode::Long {
        return Ok(code);
    }
    let mut second = Emitter::new(mode, addrs.clone())?;
    body(&mut second)?;
    let (final_code, final_addrs) = second.assemble(ip)?;
    if final_code.len() != code.len() || final_addrs != addrs {
        return Err(TinyGuestError::LayoutMoved);
    }
    Ok(final_code)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Long,
    Protected,
}

/// A code assembler plus the data blobs to place after the code.
struct Emitter {
    a: CodeAssembler,
    mode: Mode,
    data: Vec<(CodeLabel, Vec<u8>)>,
    /// Blob addresses found by a previous pass (32-bit code only).
    known_addrs: Vec<u64>,
}

/// Where a data blob is: a label for IP-relative use, an absolute address for 32-bit code.
struct Blob {
    label: CodeLabel,
    addr: u64,
}

impl Blob {
    /// Its address as a 32-bit displacement (0 in a first pass, before the layout is known).
    fn addr32(&self) -> u32 {
        self.addr as u32
    }
}

impl Emitter {
    fn new(mode: Mode, known_addrs: Vec<u64>) -> Result<Self, TinyGuestError> {
        let bits = match mode {
            Mode::Long => 64,
            Mode::Protected => 32,
        };
        Ok(Self {
            a: CodeAssembler::new(bits)?,
            mode,
            data: Vec::new(),
            known_addrs,
        })
    }

    fn prologue(&mut self, program: &Program) -> Result<(), TinyGuestError> {
        self.a.cli()?;
        if let Some(code) = program.post_code {
            self.a.mov(al, u32::from(code))?;
            self.a.out(DEBUG_PORT, al)?;
        }
        self.print(&program.message)
    }

    /// Places `bytes` after the code.
    fn blob(&mut self, bytes: &[u8]) -> Blob {
        let label = self.a.create_label();
        let addr = self.known_addrs.get(self.data.len()).copied().unwrap_or(0);
        self.data.push((label, bytes.to_vec()));
        Blob { label, addr }
    }

    /// Sends `bytes` to COM1, polling LSR (with a budget) before each byte. Clobbers
    /// eax, ecx, edx, esi/rsi, edi.
    fn print(&mut self, bytes: &[u8]) -> Result<(), TinyGuestError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let text = self.blob(bytes);
        let len = u32::try_from(bytes.len()).map_err(|_| TinyGuestError::MessageTooLong)?;
        let mut next = self.a.create_label();
        let mut poll = self.a.create_label();
        let mut send = self.a.create_label();
        let mut done = self.a.create_label();
        match self.mode {
            Mode::Long => self.a.lea(rsi, ptr(text.label))?,
            Mode::Protected => self.a.mov(esi, text.addr32())?,
        }
        self.a.mov(ecx, len)?;
        self.place(&mut next)?;
        self.a.test(ecx, ecx)?;
        self.a.jz(done)?;
        self.a.mov(edi, UART_POLL_BUDGET)?;
        self.place(&mut poll)?;
        self.a.mov(dx, u32::from(COM1_LSR))?;
        self.a.in_(al, dx)?;
        self.a.test(al, LSR_THR_EMPTY)?;
        self.a.jnz(send)?;
        self.a.dec(edi)?;
        self.a.jnz(poll)?;
        self.place(&mut send)?;
        match self.mode {
            Mode::Long => {
                self.a.mov(al, byte_ptr(rsi))?;
                self.a.inc(rsi)?;
            }
            Mode::Protected => {
                self.a.mov(al, byte_ptr(esi))?;
                self.a.inc(esi)?;
            }
        }
        self.a.mov(dx, u32::from(COM1_DATA))?;
        self.a.out(dx, al)?;
        self.a.dec(ecx)?;
        self.a.jmp(next)?;
        self.place(&mut done)?;
        Ok(())
    }

    /// Prints `ok` when the byte at `at` is not zero, else `bad`.
    fn check_nonzero_byte(
        &mut self,
        at: AsmMemoryOperand,
        ok: &str,
        bad: &str,
    ) -> Result<(), TinyGuestError> {
        let failed = self.a.create_label();
        self.a.cmp(byte_ptr(at), 0)?;
        self.a.je(failed)?;
        self.report(failed, ok, bad)
    }

    /// Prints `ok` when the dword at `at` equals `expected`, else `bad`.
    fn check_dword(
        &mut self,
        at: AsmMemoryOperand,
        expected: u32,
        ok: &str,
        bad: &str,
    ) -> Result<(), TinyGuestError> {
        let failed = self.a.create_label();
        self.a.cmp(dword_ptr(at), expected)?;
        self.a.jne(failed)?;
        self.report(failed, ok, bad)
    }

    /// Emits "print `ok`" falling through from the check and "print `bad`" at `failed`.
    fn report(&mut self, mut failed: CodeLabel, ok: &str, bad: &str) -> Result<(), TinyGuestError> {
        let mut after = self.a.create_label();
        self.print(ok.as_bytes())?;
        self.a.jmp(after)?;
        self.place(&mut failed)?;
        self.print(bad.as_bytes())?;
        self.place(&mut after)?;
        Ok(())
    }

    fn end(&mut self, ending: Ending) -> Result<(), TinyGuestError> {
        match ending {
            Ending::AcpiPowerOff => {
                self.a.mov(dx, u32::from(ACPI_SLEEP_CONTROL_PORT))?;
                self.a.mov(al, (ACPI_S5_SLP_TYP << 2) | ACPI_SLP_EN)?;
                self.a.out(dx, al)?;
            }
            Ending::I8042Reset => {
                self.a.mov(al, I8042_RESET_COMMAND)?;
                self.a.out(I8042_COMMAND_PORT, al)?;
            }
            Ending::AcpiReset => {
                self.a.mov(dx, u32::from(ACPI_RESET_PORT))?;
                self.a.mov(al, ACPI_RESET_VALUE)?;
                self.a.out(dx, al)?;
            }
            Ending::TripleFault => {
                // limit 0, base 0: every vector is out of bounds.
                let desc_len = match self.mode {
                    Mode::Long => 10,
                    Mode::Protected => 6,
                };
                let desc = self.blob(&vec![0u8; desc_len]);
                match self.mode {
                    Mode::Long => self.a.lidt(ptr(desc.label))?,
                    Mode::Protected => self.a.lidt(ptr(desc.addr32()))?,
                }
                self.a.ud2()?;
            }
            Ending::Int3 => self.a.int3()?,
            Ending::Halt => {}
        }
        let mut halt = self.a.create_label();
        self.place(&mut halt)?;
        self.a.cli()?;
        self.a.hlt()?;
        self.a.jmp(halt)?;
        Ok(())
    }

    /// Binds `label` here. The zero-byte instruction lets labels follow each other (iced allows
    /// one label per instruction).
    fn place(&mut self, label: &mut CodeLabel) -> Result<(), TinyGuestError> {
        self.a.set_label(label)?;
        self.a.zero_bytes()?;
        Ok(())
    }

    /// The machine code and the address of each blob.
    fn assemble(mut self, ip: u64) -> Result<(Vec<u8>, Vec<u64>), TinyGuestError> {
        let mut labels = Vec::with_capacity(self.data.len());
        for (mut label, bytes) in std::mem::take(&mut self.data) {
            self.place(&mut label)?;
            self.a.db(&bytes)?;
            labels.push(label);
        }
        let result = self
            .a
            .assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        let addrs = labels
            .iter()
            .map(|l| result.label_ip(l))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((result.inner.code_buffer, addrs))
    }
}
