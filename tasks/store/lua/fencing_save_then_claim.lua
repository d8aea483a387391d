-- A job's terminal write and the next job's claim in one call (tasks.store.fencing): a bulk
-- message's jobs run one after another, so the claim of the next rides on the outcome of the
-- one before (one round trip a job fewer). KEYS: fencing_save.lua's (six, and any entered sets), then
-- fencing_claim.lua's four. ARGV: fencing_save.lua's ten, then fencing_claim.lua's. The claim is made only if the
-- save wrote. Returns {the save's answer, the claim's answer if made}.
local function save(KEYS, ARGV)
--!include fencing_save
end
local function claim(KEYS, ARGV)
--!include fencing_claim
end
local save_keys, claim_keys, save_args, claim_args = {}, {}, {}, {}
local nsave = #KEYS - 4
for i = 1, nsave do save_keys[i] = KEYS[i] end
for i = nsave + 1, #KEYS do claim_keys[i - nsave] = KEYS[i] end
for i = 1, 10 do save_args[i] = ARGV[i] end
for i = 11, #ARGV do claim_args[i - 10] = ARGV[i] end
local saved = save(save_keys, save_args)
if saved ~= 1 then return {saved} end
return {saved, claim(claim_keys, claim_args)}
