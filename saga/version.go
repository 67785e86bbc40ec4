package saga

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Upgrade says how the sagas started on an earlier version of a
// definition go on under this one: either that version itself keeps
// driving them to their end (Keep), or each of them continues on this
// version from the place Steps gives it. A deploy never guesses: a saga
// whose version no Upgrade covers, or whose place Steps does not account
// for, is not driven (the deploy check lists it, and an orchestrator
// refuses to start while there is one).
type Upgrade struct {
	// From is the earlier version.
	From int
	// Keep is version From of the definition, kept so that its sagas run
	// to their end with its own steps (and their replies, timeouts and
	// compensations); new sagas start on the newest version.
	Keep *Definition
	// Steps maps the steps and compensations of version From that this
	// version renamed or dropped (old name to new name) to the step or
	// compensation of this version that takes over from them; "" says a
	// dropped step needs nothing more (nothing to undo), for sagas that
	// went through it. A name this version also has needs no entry: the
	// same name is the same step (names are what idempotency keys and
	// histories are made of). A step renamed while its command is in
	// flight keeps its command's idempotency key (StepRecord.Was), so
	// that the worker's answer, and a re-send, still match.
	Steps map[string]string
}

// ErrVersionNotServed is returned by Decide for a saga of a version the
// definition neither drives nor upgrades: started by a newer deployment,
// or at a place of an older version that no Upgrade accounts for.
var ErrVersionNotServed = errors.New("saga: definition version not served")

// VersionOf is the version an instance was started with, or upgraded to
// (1 for sagas saved before versions existed).
func VersionOf(in *Instance) int { return max(in.Version, 1) }

// drivers lists the definitions that drive sagas without an upgrade: this
// version and the ones it keeps, newest first.
func (d *Definition) drivers() []*Definition {
	out := []*Definition{d}
	for _, u := range d.Upgrades {
		if u.Keep != nil {
			out = append(out, u.Keep.drivers()...)
		}
	}
	return out
}

// Served lists the versions the definition drives as they are: its own
// and the ones it keeps, newest first.
func (d *Definition) Served() []int {
	var out []int
	for _, k := range d.drivers() {
		out = append(out, k.Version)
	}
	return out
}

// driver returns the definition that drives sagas of version v as they
// are, or nil.
func (d *Definition) driver(v int) *Definition {
	for _, k := range d.drivers() {
		if k.Version == v {
			return k
		}
	}
	return nil
}

// upgradeFrom returns the Upgrade (with Steps) of this definition, or of a
// version it keeps, that takes sagas of version v, and the definition
// that declares it.
func (d *Definition) upgradeFrom(v int) (*Definition, *Upgrade) {
	for _, k := range d.drivers() {
		for i := range k.Upgrades {
			if u := &k.Upgrades[i]; u.Keep == nil && u.From == v {
				return k, u
			}
		}
	}
	return nil, nil
}

// For returns the definition that drives in as it is (its own version or
// one this definition keeps), or nil when in must be upgraded first, or
// cannot be driven.
func (d *Definition) For(in *Instance) *Definition { return d.driver(VersionOf(in)) }

// rename is the name a step or compensation of an upgraded saga has on
// this version: the Upgrade's entry, else its own name when this version
// has it. ok is false when neither accounts for it; to is "" when the
// Upgrade drops it.
func (d *Definition) rename(u *Upgrade, name string) (to string, ok bool) {
	if to, ok := u.Steps[name]; ok {
		return to, true
	}
	if slices.Contains(d.StepNames(), name) {
		return name, true
	}
	return "", false
}

// place checks that a saga of version u.From, in phase (stuck ones: the
// phase they are stuck in) at step or compensation at, having gone
// through the steps passed, has a place on this version, and returns the
// index of its step there.
func (d *Definition) place(u *Upgrade, phase Phase, at string, passed []string) (int, error) {
	step := 0
	if phase == Running || phase == Compensating {
		to, _ := d.rename(u, at)
		step = slices.IndexFunc(d.Steps, func(s Step) bool {
			if phase == Compensating {
				return to != "" && s.Compensation != nil && s.Compensation.Name == to
			}
			return to != "" && s.Name == to
		})
		if step < 0 {
			what := "step"
			if phase == Compensating {
				what = "compensation"
			}
			return 0, fmt.Errorf("%w: %s version %d has no %s to go on from %q of version %d (map it in Upgrade.Steps)",
				ErrVersionNotServed, d.Name, d.Version, what, at, u.From)
		}
	}
	var missing []string
	for _, p := range passed {
		if _, ok := d.rename(u, p); !ok && !slices.Contains(missing, p) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return 0, fmt.Errorf("%w: %s version %d has no step for %s of version %d that the saga went through (map it in Upgrade.Steps, to \"\" when it needs no undoing)",
			ErrVersionNotServed, d.Name, d.Version, strings.Join(missing, ", "), u.From)
	}
	return step, nil
}

// at is the name of the step or compensation a saga is at (the last of
// its action and compensation records), and passed the steps it went
// through.
func (in *Instance) at() (at string, passed []string) {
	for _, r := range in.History {
		switch r.Kind {
		case KindAction:
			passed = append(passed, r.Name)
			at = r.Name
		case KindCompensation:
			at = r.Name
		}
	}
	return at, passed
}

// resolve returns the definition that drives in and the instance as that
// definition sees it: upgraded to it when in's version is one an Upgrade
// maps.
func (d *Definition) resolve(in Instance) (*Definition, Instance, error) {
	v := VersionOf(&in)
	if k := d.driver(v); k != nil {
		return k, in, nil
	}
	k, u := d.upgradeFrom(v)
	if k == nil {
		return nil, in, fmt.Errorf("%w: %s version %d (this deployment drives versions %v)", ErrVersionNotServed, d.Name, v, d.Served())
	}
	phase := in.Phase
	if phase == Stuck {
		phase = in.StuckIn
	}
	at, passed := in.at()
	step, err := k.place(u, phase, at, passed)
	if err != nil {
		return nil, in, err
	}
	out := in.clone()
	out.Version, out.Step = k.Version, step
	for i := range out.History {
		r := &out.History[i]
		if r.Kind == KindSignal {
			continue
		}
		if to, ok := k.rename(u, r.Name); ok && to != "" && to != r.Name {
			if r.Was == "" {
				r.Was = r.Name // the name its commands were sent with
			}
			r.Name = to
		}
	}
	if !in.Phase.Terminal() && in.Phase != Stuck {
		out.State = k.StateOf(&out)
	}
	return k, out, nil
}

// Position is a group of live sagas of one version of a definition at one
// place: what a deploy check looks at (Store.Positions).
type Position struct {
	Definition string
	Version    int
	// Phase is pending, running, compensating or stuck; StuckIn is the
	// phase a stuck saga is stuck in.
	Phase   Phase
	StuckIn Phase
	State   string
	// At is the step or compensation in progress ("" when pending).
	At string
	// Passed are the steps the sagas of the group went through.
	Passed []string
	Count  int
	Oldest time.Time
}

// Stranded is a Position no definition of a deployment can drive, and
// why.
type Stranded struct {
	Position
	Why string
}

// CheckDeploy returns the positions of live sagas that the definitions
// cannot drive: of a version that is neither served nor upgraded, or at a
// place the upgrade does not account for. Positions of definitions not in
// defs are someone else's and not checked.
func CheckDeploy(defs []*Definition, ps []Position) []Stranded {
	byName := map[string]*Definition{}
	for _, d := range defs {
		byName[d.Name] = d
	}
	var out []Stranded
	for _, p := range ps {
		d := byName[p.Definition]
		if d == nil || d.driver(max(p.Version, 1)) != nil {
			continue
		}
		k, u := d.upgradeFrom(max(p.Version, 1))
		if k == nil {
			out = append(out, Stranded{p, fmt.Sprintf("version %d is neither served nor upgraded (this deployment drives versions %v)", p.Version, d.Served())})
			continue
		}
		phase := p.Phase
		if phase == Stuck {
			phase = p.StuckIn
		}
		if _, err := k.place(u, phase, p.At, p.Passed); err != nil {
			out = append(out, Stranded{p, strings.TrimPrefix(err.Error(), ErrVersionNotServed.Error()+": ")})
		}
	}
	return out
}

// ServedVersions lists, per definition, the versions it drives as they
// are: what Store.Positions leaves out.
func ServedVersions(defs []*Definition) map[string][]int {
	out := map[string][]int{}
	for _, d := range defs {
		out[d.Name] = d.Served()
	}
	return out
}

// validateUpgrades checks d's Upgrades (d.Version is set).
func (d *Definition) validateUpgrades() []error {
	var errs []error
	from := map[int]bool{}
	own := d.StepNames()
	for _, u := range d.Upgrades {
		switch {
		case u.From < 1 || u.From >= d.Version:
			errs = append(errs, fmt.Errorf("upgrade from version %d: it must be earlier than %d", u.From, d.Version))
		case from[u.From]:
			errs = append(errs, fmt.Errorf("two upgrades from version %d", u.From))
		case u.Keep != nil && len(u.Steps) > 0:
			errs = append(errs, fmt.Errorf("upgrade from version %d: keep the old version or map its steps, not both", u.From))
		case u.Keep != nil:
			if err := u.Keep.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("upgrade from version %d: %w", u.From, err))
			} else if u.Keep.Name != d.Name || u.Keep.Version != u.From {
				errs = append(errs, fmt.Errorf("upgrade from version %d keeps %s version %d", u.From, u.Keep.Name, u.Keep.Version))
			}
		}
		from[u.From] = true
		for old, to := range u.Steps {
			if to != "" && !slices.Contains(own, to) {
				errs = append(errs, fmt.Errorf("upgrade from version %d maps %q to %q, which is no step or compensation of version %d", u.From, old, to, d.Version))
			}
		}
	}
	return errs
}
