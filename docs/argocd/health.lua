-- Argo CD health check for pm.qualys.io/DeploymentJob (Lua 5.1, as Argo CD runs it).
-- Install it as resource.customizations.health.pm.qualys.io_DeploymentJob (docs/gitops.md).
--
-- It reads the kstatus conditions the operator writes (Ready, Reconciling, Stalled):
--   no status yet                                  -> Progressing
--   reason Paused (pm.qualys.io/paused)            -> Suspended
--   status.observedGeneration < metadata.generation -> Progressing (the new spec is not seen yet)
--   Stalled=True                                   -> Degraded, with the condition's message
--   Reconciling=True                               -> Progressing
--   Ready=True                                     -> Healthy
--   Ready=False, reason DriftDetected              -> Degraded (driftPolicy Report: nothing corrects it)
--   anything else                                  -> Progressing
-- Paused comes before the generation check: while paused the operator leaves observedGeneration
-- as it was, so a spec edited during the pause would otherwise show Progressing for good.
local hs = {}

local function find(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local status = obj.status
local conditions = {}
if status ~= nil and status.conditions ~= nil then
  conditions = status.conditions
end
if #conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
local stale = generation ~= nil and (observed == nil or observed < generation)

for _, c in ipairs(conditions) do
  if c.reason == "Paused" then
    hs.status = "Suspended"
    hs.message = "Reconciling is paused by the pm.qualys.io/paused annotation"
    if stale then
      hs.message = hs.message .. "; spec changes (generation " .. generation .. ") wait until it is removed"
    end
    return hs
  end
end

if stale then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local stalled = find(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local reconciling = find(conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

local ready = find(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if ready ~= nil and ready.status == "False" and ready.reason == "DriftDetected" then
  hs.status = "Degraded"
  hs.message = "live job differs from spec; driftPolicy Report"
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = hs.message .. ": " .. ready.message
  end
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the operator"
end
return hs
