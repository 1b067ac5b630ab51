//! The closed value sets of the DeploymentJob schema. Each renders to the exact string the
//! Qualys API uses, so `render` never spells a value itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! api_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
        }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as the API spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)+ }
            }

            /// Parse the API's spelling.
            pub fn from_wire(value: &str) -> Option<Self> {
                match value { $($wire => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

api_enum! {
    /// What the job does: install patches, or roll them back (both platforms).
    pub enum JobType { Install = "Install", Rollback = "Rollback", }
}

api_enum! {
    /// The operating-system family the job targets.
    pub enum Platform { Windows = "Windows", Linux = "Linux", }
}

api_enum! {
    /// Whether the job is active. Changed through the API's status endpoint, never by an update.
    /// A non-recurring job (On-demand, Once) that has been enabled runs and cannot be disabled again.
    pub enum JobState { Enabled = "Enabled", Disabled = "Disabled", }
}

api_enum! {
    /// When the job runs.
    pub enum ScheduleType {
        OnDemand = "On-demand",
        Once = "Once",
        Daily = "Daily",
        Weekly = "Weekly",
        Monthly = "Monthly",
    }
}

api_enum! {
    /// Which clock `startDateTime` is read in: a named zone (`timezone`) or each agent's local time.
    pub enum TimezoneType { SpecificTz = "SPECIFIC_TZ", AgentTz = "AGENT_TZ", }
}

api_enum! {
    /// A unit of time.
    pub enum TimeUnit { Hours = "HOURS", Minutes = "MINUTES", }
}

api_enum! {
    /// How a list of tags combines: any of them, or all of them.
    pub enum FilterType { Any = "Any", All = "All", }
}

api_enum! {
    /// What a pre- or post-deploy action does.
    pub enum ActionKind {
        RunScript = "Run Script",
        InstallSoftware = "Install Software",
        ChangeRegistryKey = "Change Registry Key",
        UninstallSoftware = "Uninstall Software",
    }
}

api_enum! {
    /// What a Change Registry Key action does to the key or value.
    pub enum RegistryAction { Create = "Create", Update = "Update", Delete = "Delete", }
}

api_enum! {
    /// The type of a registry value, as Windows names it.
    pub enum RegistryValueType {
        String = "REG_SZ",
        ExpandString = "REG_EXPAND_SZ",
        MultiString = "REG_MULTI_SZ",
        Dword = "REG_DWORD",
        Qword = "REG_QWORD",
        Binary = "REG_BINARY",
    }
}

api_enum! {
    /// The interpreter of a script: PowerShell or a POSIX shell.
    pub enum ScriptType { Ps = "ps", Sh = "sh", }
}

api_enum! {
    /// The only field a chained-job rule can test.
    pub enum ChainedRuleField { PostDeployAction = "postDeployAction", }
}

api_enum! {
    /// The only condition a chained-job rule can state.
    pub enum ChainedRuleCondition { PostActionsSucceeded = "Post Actions were successfully executed", }
}

api_enum! {
    /// What happens to the Qualys job when the DeploymentJob is deleted.
    pub enum DeletionPolicy { Delete = "Delete", Orphan = "Orphan", }
}

api_enum! {
    /// What the operator does when the live job differs from the spec.
    pub enum DriftPolicy { Correct = "Correct", Report = "Report", }
}

api_enum! {
    /// What the operator does when the job it manages has vanished from Qualys.
    pub enum RecreatePolicy { Never = "Never", Recreate = "Recreate", }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spellings_round_trip() {
        for s in ScheduleType::ALL {
            assert_eq!(ScheduleType::from_wire(s.as_str()), Some(*s));
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json, serde_json::Value::String(s.as_str().into()));
        }
        assert_eq!(ScheduleType::OnDemand.as_str(), "On-demand");
        assert_eq!(TimezoneType::AgentTz.as_str(), "AGENT_TZ");
        assert_eq!(
            ActionKind::from_wire("Install Software"),
            Some(ActionKind::InstallSoftware)
        );
        assert_eq!(Platform::from_wire("macOS"), None);
    }
}
