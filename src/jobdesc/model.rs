//! The typed job description every format is read into and written from.
//!
//! Units are fixed here so that no writer has to guess: times in seconds,
//! memory and disk in MB, memory *per slot* (what xRSL `memory` means).
//! Everything the writers emit must be expressible both as xRSL and as ADL,
//! so fields that only one of them can carry are left out on purpose.

use serde::{Deserialize, Serialize};

/// One ARC job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Program to run: a path on the worker node or a staged input file name.
    pub executable: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_files: Vec<InputFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<OutputFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<EnvVar>,
    /// Wall-clock limit in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub walltime_s: Option<u64>,
    /// Total CPU time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cputime_s: Option<u64>,
    /// Memory per slot (core) in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Scratch disk in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// Total slots (cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Slots per node; ARC needs `count` with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_per_node: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_environments: Vec<RuntimeEnv>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notify>,
    /// 0..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun: Option<u32>,
    /// Directory in the session dir for A-REX's own logs of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gmlog: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Name in the job's session directory.
    pub name: String,
    /// Where the CE fetches it from; `None`: the client uploads the local
    /// file of this name (relative to the job description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    pub name: String,
    /// Where the CE uploads it; `None`: kept in the session dir for retrieval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// A runtime environment: `name` may carry a version (`APPS/HEP/ATLAS-20.1`),
/// options are passed to the RTE script (ENV/SINGULARITY takes the image first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEnv {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl RuntimeEnv {
    /// Split like ARC's `Software(name)`: the version starts after the first
    /// `-` that is followed by a digit.
    pub fn name_and_version(&self) -> (&str, Option<&str>) {
        let b = self.name.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c == b'-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                return (&self.name[..i], Some(&self.name[i + 1..]));
            }
        }
        (&self.name, None)
    }
}

/// Job states an e-mail can be sent on. Only those both xRSL and ADL can
/// carry: xRSL's `d` and `c` have no ADL counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyState {
    /// xRSL `b`, ADL PREPROCESSING.
    Preparing,
    /// xRSL `q`, ADL PROCESSING.
    Queued,
    /// xRSL `f`, ADL POSTPROCESSING.
    Finishing,
    /// xRSL `e`, ADL TERMINAL.
    Finished,
}

impl NotifyState {
    pub const ALL: [NotifyState; 4] = [
        NotifyState::Preparing,
        NotifyState::Queued,
        NotifyState::Finishing,
        NotifyState::Finished,
    ];

    pub fn xrsl_flag(self) -> char {
        match self {
            NotifyState::Preparing => 'b',
            NotifyState::Queued => 'q',
            NotifyState::Finishing => 'f',
            NotifyState::Finished => 'e',
        }
    }

    pub fn from_xrsl_flag(c: char) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.xrsl_flag() == c)
    }

    pub fn adl_state(self) -> &'static str {
        match self {
            NotifyState::Preparing => "PREPROCESSING",
            NotifyState::Queued => "PROCESSING",
            NotifyState::Finishing => "POSTPROCESSING",
            NotifyState::Finished => "TERMINAL",
        }
    }

    pub fn from_adl_state(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.adl_state() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub email: String,
    pub states: Vec<NotifyState>,
}

/// Which field of a [`JobSpec`] a problem is about; readers map it back to a
/// place in their input (xRSL line:column, ADL element).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Executable,
    Arguments,
    Stdin,
    Stdout,
    Stderr,
    InputFiles,
    Executables,
    OutputFiles,
    Environment,
    Walltime,
    Cputime,
    Memory,
    Disk,
    Count,
    CountPerNode,
    Exclusive,
    Queue,
    RuntimeEnvironment,
    JobName,
    Notify,
    Priority,
    Rerun,
    Gmlog,
}

impl Field {
    /// The xRSL attribute that sets this field.
    pub fn xrsl(self) -> &'static str {
        match self {
            Field::Executable => "executable",
            Field::Arguments => "arguments",
            Field::Stdin => "stdin",
            Field::Stdout => "stdout",
            Field::Stderr => "stderr",
            Field::InputFiles => "inputfiles",
            Field::Executables => "executables",
            Field::OutputFiles => "outputfiles",
            Field::Environment => "environment",
            Field::Walltime => "walltime",
            Field::Cputime => "cputime",
            Field::Memory => "memory",
            Field::Disk => "disk",
            Field::Count => "count",
            Field::CountPerNode => "countpernode",
            Field::Exclusive => "exclusiveexecution",
            Field::Queue => "queue",
            Field::RuntimeEnvironment => "runtimeenvironment",
            Field::JobName => "jobname",
            Field::Notify => "notify",
            Field::Priority => "priority",
            Field::Rerun => "rerun",
            Field::Gmlog => "gmlog",
        }
    }

    /// The ADL element that carries this field.
    pub fn adl(self) -> &'static str {
        match self {
            Field::Executable | Field::Arguments => "Application/Executable",
            Field::Stdin => "Application/Input",
            Field::Stdout => "Application/Output",
            Field::Stderr => "Application/Error",
            Field::InputFiles | Field::Executables => "DataStaging/InputFile",
            Field::OutputFiles => "DataStaging/OutputFile",
            Field::Environment => "Application/Environment",
            Field::Walltime => "Resources/WallTime",
            Field::Cputime => "Resources/TotalCPUTime",
            Field::Memory => "Resources/IndividualPhysicalMemory",
            Field::Disk => "Resources/DiskSpaceRequirement",
            Field::Count => "Resources/SlotRequirement/NumberOfSlots",
            Field::CountPerNode => "Resources/SlotRequirement/SlotsPerHost",
            Field::Exclusive => "Resources/SlotRequirement/ExclusiveExecution",
            Field::Queue => "Resources/QueueName",
            Field::RuntimeEnvironment => "Resources/RuntimeEnvironment",
            Field::JobName => "ActivityIdentification/Name",
            Field::Notify => "Application/Notification",
            Field::Priority => "Application/nordugrid-adl:Priority",
            Field::Rerun => "Application/nordugrid-adl:Rerun",
            Field::Gmlog => "Application/nordugrid-adl:LoggingDirectory",
        }
    }
}
