//! EC2 Fleet: an instance launched by an EC2 Fleet of type `maintain` is
//! replaced by the fleet when it ends, unless the fleet's target capacity
//! is lowered first. An idle end with `terminate` outside an Auto Scaling
//! group does so before it shuts the OS down.

use aws_sdk_ec2::types::{
    FleetExcessCapacityTerminationPolicy, FleetType, TargetCapacitySpecificationRequest,
};
use aws_sdk_ec2::Client;

use crate::aws;

/// The tag EC2 Fleet puts on the instances it launches.
pub const FLEET_TAG: &str = "aws:ec2:fleet-id";

/// The EC2 Fleet an instance belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub id: String,
    /// `maintain`, `request` or `instant`.
    pub kind: String,
    /// Its total target capacity now.
    pub total: i32,
}

/// The fleet that launched `instance_id` (its `aws:ec2:fleet-id` tag), if
/// any.
pub async fn of_instance(ec2: &Client, instance_id: &str) -> Result<Option<Fleet>, String> {
    let out = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| aws::describe(&e))?;
    let id = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .find(|t| t.key() == Some(FLEET_TAG))
        .and_then(|t| t.value())
        .map(String::from);
    let Some(id) = id else {
        return Ok(None);
    };
    let out = ec2
        .describe_fleets()
        .fleet_ids(&id)
        .send()
        .await
        .map_err(|e| aws::describe(&e))?;
    let fleet = out
        .fleets()
        .first()
        .ok_or_else(|| format!("the fleet {id} is gone"))?;
    Ok(Some(Fleet {
        kind: fleet
            .r#type()
            .map_or("maintain", FleetType::as_str)
            .to_string(),
        total: fleet
            .target_capacity_specification()
            .and_then(|t| t.total_target_capacity())
            .unwrap_or_default(),
        id,
    }))
}

/// Lowers the fleet's total target capacity by one (`ModifyFleet`), so
/// that it launches no replacement, without letting it terminate any
/// instance for it (this one goes by its own shutdown); the new capacity.
pub async fn lower(ec2: &Client, fleet: &Fleet) -> Result<i32, String> {
    let total = (fleet.total - 1).max(0);
    ec2.modify_fleet()
        .fleet_id(&fleet.id)
        .target_capacity_specification(
            TargetCapacitySpecificationRequest::builder()
                .total_target_capacity(total)
                .build(),
        )
        .excess_capacity_termination_policy(FleetExcessCapacityTerminationPolicy::NoTermination)
        .send()
        .await
        .map_err(|e| aws::describe(&e))?;
    Ok(total)
}
