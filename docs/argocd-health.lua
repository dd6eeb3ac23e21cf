-- Argo CD health check for flotilla.dev/v1alpha1 SmallModel (docs/gitops.md).
-- Put it in argocd-cm under resource.customizations.health.flotilla.dev_SmallModel.
--
-- It reads what the operator writes (docs/conditions.md) the way kstatus does
-- (sigs.k8s.io/cli-utils status.Compute), so Argo CD and Flux agree:
--   metadata.generation ahead of status.observedGeneration -> Progressing (spec not yet seen)
--   Reconciling=True                                       -> Progressing (optimizing, deploying, canary, pods retrying)
--   Stalled=True                                           -> Degraded    (failed optimization, rolled-back canary)
--   Ready=True                                             -> Healthy
-- One difference: with no status, no observedGeneration or no Ready condition yet (created,
-- not yet reconciled: is the operator running?) this says Progressing where kstatus says Current.
-- Written for Lua 5.1 (Argo CD's gopher-lua) and tested with Lua 5.1 and 5.4
-- (tests/unit/test_gitops.py). Numbers arrive as floats from Argo CD: compare, never concatenate.
local hs = {}

local function condition(conditions, kind)
  for _, c in ipairs(conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function says(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "SmallModel is being deleted"
  return hs
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Flotilla operator to reconcile the SmallModel"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = string.format(
    "SmallModel generation is %d, but latest observed generation is %d",
    generation,
    status.observedGeneration
  )
  return hs
end

-- In list order, the first abnormal-true condition decides, as in kstatus.
for _, c in ipairs(status.conditions or {}) do
  if c.type == "Reconciling" and c.status == "True" then
    hs.status = "Progressing"
    hs.message = says(c, "Reconciling")
    return hs
  end
  if c.type == "Stalled" and c.status == "True" then
    hs.status = "Degraded"
    hs.message = says(c, "Stalled")
    return hs
  end
end

local ready = condition(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready, "Ready")
  return hs
end
if ready ~= nil then
  hs.status = "Progressing"
  hs.message = says(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
