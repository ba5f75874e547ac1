package desired

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/nixpeer/nixpeer/internal/msg"
	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/nix"
)

// checkHosts runs the checks that involve several hosts: unique names,
// addresses and key names, substituteFrom references, cycles and, with
// trust: pinned, the required host keys. It also fills in the keyName
// default. Hosts whose own fields had errors take part as far as their
// valid fields allow, so one mistake is reported once.
func checkHosts(el *errorList, f *File, infos []*hostInfo) {
	byName := map[string]int{} // name as written -> index of first host
	for i, hi := range infos {
		if hi.rawName == "" {
			continue
		}
		if first, dup := byName[hi.rawName]; dup {
			el.add(hi.namePos, "duplicate host name %s (first used at %s); give every host its own name", msg.Quote(hi.rawName), infos[first].namePos)
			continue
		}
		byName[hi.rawName] = i
	}

	byAddr := map[string]int{}
	for i, hi := range infos {
		if hi.h.Address == "" {
			continue
		}
		k, _ := hostname.Canonical(hi.h.Address) // checked while decoding
		if first, dup := byAddr[k]; dup {
			el.add(hi.addrPos, "duplicate address %q: %s at %s already has it; give every host its own address", hi.h.Address, infos[first].label(), infos[first].addrPos)
			continue
		}
		byAddr[k] = i
	}

	checkKeyNames(el, infos)

	names := f.Names()
	for _, c := range f.Caches {
		names = append(names, c.Name)
	}
	edges := make([][]int, len(infos)) // valid substituteFrom references
	for i, hi := range infos {
		seen := map[string]Pos{}
		for _, r := range hi.subs {
			if first, dup := seen[r.s]; dup {
				el.add(r.pos, "substituteFrom lists %q twice (first at %s); remove one", r.s, first)
				continue
			}
			seen[r.s] = r.pos
			if r.s == hi.rawName {
				el.add(r.pos, "host %q cannot substitute from itself; remove %q from its substituteFrom", r.s, r.s)
				continue
			}
			t, ok := byName[r.s]
			if !ok && f.Cache(r.s) != nil {
				continue // see checkCaches
			}
			if !ok {
				el.add(r.pos, "substituteFrom names %q, which is not a host or cache in this file%s; name one of: %s", r.s, didYouMean(r.s, names), shortList(names, 20))
				continue
			}
			edges[i] = append(edges[i], t)
			if target := infos[t]; !target.serveGiven {
				el.add(r.pos, "substituteFrom names host %q, which does not serve its store; add \"serve: {}\" to host %q (at %s) or remove %q here", r.s, r.s, target.h.Pos, r.s)
			}
		}
	}

	checkCaches(el, f, infos, byName)
	checkCycles(el, infos, edges)
	if f.Trust == TrustPinned {
		checkPins(el, infos, edges)
	}
	if f.Trust == TrustCA {
		for _, hi := range infos {
			if hi.hostKeyGiven {
				el.add(hi.hostKeyPos, "hostKey is not read with trust mode ca: a host's key is the one its certificate names, so that a key replaced under the CA needs no edit; remove it")
			}
		}
	}
}

// keyscan returns the command that prints the host's ed25519 host key.
// It is meant for the sshPort and address decoded so far.
func keyscan(hi *hostInfo) string {
	addr := cmp.Or(hi.h.Address, "ADDRESS")
	if hi.h.SSHPort != DefaultSSHPort {
		return fmt.Sprintf("ssh-keyscan -p %d -t ed25519 %s", hi.h.SSHPort, addr)
	}
	return "ssh-keyscan -t ed25519 " + addr
}

// shortList joins at most n of items for a message.
func shortList(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}

// label names a host in messages.
func (hi *hostInfo) label() string {
	if hi.rawName != "" {
		return fmt.Sprintf("host %s", msg.Quote(hi.rawName))
	}
	return "the host"
}

// Names lists the valid host names in file order.
func (f *File) Names() []string {
	var out []string
	for _, h := range f.Hosts {
		if h.Name != "" && !slices.Contains(out, h.Name) {
			out = append(out, h.Name)
		}
	}
	return out
}

// checkKeyNames fills in the keyName default (a pin's name, else the
// address) and checks that no two serving hosts share a key name: a
// consumer trusts public keys by name, so a shared name would make one key
// replace the other.
func checkKeyNames(el *errorList, infos []*hostInfo) {
	seen := map[string]*hostInfo{}
	for _, hi := range infos {
		s := hi.h.Serve
		if s == nil {
			continue
		}
		pos := hi.keyNamePos
		if pinned, _, _ := strings.Cut(s.PublicKey, ":"); !hi.keyNameGiven && pinned != "" && s.KeyGeneration == 1 {
			// A pinned key names the key.
			s.KeyName, hi.keyNameGiven, pos = pinned, true, hi.publicKeyPos
		}
		if !hi.keyNameGiven {
			pos = s.Pos
			if hi.h.Address == "" {
				continue
			}
			if r := checkKeyName(hi.h.Address); r != "" {
				el.add(s.Pos, "serve needs a keyName here: the default, the address %q, %s (a key name cannot hold ':'); add for example \"keyName: %s\"", hi.h.Address, r, cmp.Or(hi.h.Name, "cache-name"))
				continue
			}
			s.KeyName = hi.h.Address
		}
		if s.KeyName == "" {
			continue // an invalid explicit keyName, already reported
		}
		if first, dup := seen[s.KeyName]; dup {
			el.add(pos, "%s uses the binary-cache keyName %q, as %s does; consumers trust keys by name, so set a different keyName on one of them", hi.label(), s.KeyName, first.label())
			continue
		}
		for name, other := range seen {
			if _, ok := nix.KeyGeneration(name, s.KeyName); ok {
				el.add(pos, "%s uses the binary-cache keyName %q, the name of a later key generation of %s's keyName %q; choose a keyName that does not start with %q", hi.label(), s.KeyName, other.label(), name, name+"-g")
			} else if _, ok := nix.KeyGeneration(s.KeyName, name); ok {
				el.add(pos, "%s uses the binary-cache keyName %q, whose later key generations would be named like %s's keyName %q; set a different keyName on one of them", hi.label(), s.KeyName, other.label(), name)
			}
		}
		seen[s.KeyName] = hi
		if len(s.KeyName) > maxKeyNameLen-len("-g9999") {
			el.add(pos, "keyName %q is %d characters long; the limit is %d, so that the names of its later generations (%s) fit in %d", s.KeyName, len(s.KeyName), maxKeyNameLen-len("-g9999"), nix.GenerationName("NAME", 2), maxKeyNameLen)
		}
		if want := nix.GenerationName(s.KeyName, s.KeyGeneration); s.PublicKey != "" {
			if name, _, _ := strings.Cut(s.PublicKey, ":"); name != want {
				el.add(hi.publicKeyPos, "publicKey is named %q, but keyName %q with keyGeneration %d names the key %q; they must match "+
					"(to rotate the key, remove publicKey: the serving host's agent then publishes the new key to the hosts that trust it)", name, s.KeyName, s.KeyGeneration, want)
			}
		}
	}
}

// checkCycles reports each group of hosts that substitute from each other
// in a cycle, once, at the first such host's reference into the cycle.
func checkCycles(el *errorList, infos []*hostInfo, edges [][]int) {
	for _, comp := range stronglyConnected(edges) {
		if len(comp) < 2 {
			continue
		}
		in := map[int]bool{}
		for _, v := range comp {
			in[v] = true
		}
		start := slices.Min(comp)
		cycle := shortestCycle(start, edges, in)
		names := make([]string, len(cycle))
		for i, v := range cycle {
			names[i] = infos[v].rawName
		}
		pos := infos[start].h.Pos
		for _, r := range infos[start].subs {
			if r.s == infos[cycle[1]].rawName {
				pos = r.pos
				break
			}
		}
		if len(names) > 12 {
			names = append(names[:10:10], "...", names[len(names)-1])
		}
		el.add(pos, "substituteFrom forms a cycle: %s; a host cannot substitute from itself, directly or through others: remove one of these references", strings.Join(names, " -> "))
	}
}

// shortestCycle returns the shortest path start -> ... -> start within the
// hosts marked in, as indices, start first and last.
func shortestCycle(start int, edges [][]int, in map[int]bool) []int {
	prev := map[int]int{}
	queue := []int{start}
	for len(queue) > 0 {
		v := queue[0]
		queue = queue[1:]
		for _, w := range edges[v] {
			if !in[w] {
				continue
			}
			if w == start {
				path := []int{start}
				for u := v; u != start; u = prev[u] {
					path = append(path, u)
				}
				path = append(path, start)
				slices.Reverse(path[1 : len(path)-1]) // it was start, v, ..., start
				return path
			}
			if _, ok := prev[w]; !ok && w != start {
				prev[w] = v
				queue = append(queue, w)
			}
		}
	}
	return []int{start, start}
}

// stronglyConnected returns the strongly connected components of the
// graph (Tarjan's algorithm, without recursion so that a large file
// cannot exhaust the stack).
func stronglyConnected(edges [][]int) [][]int {
	n := len(edges)
	index := make([]int, n)
	low := make([]int, n)
	onStack := make([]bool, n)
	for i := range index {
		index[i] = -1
	}
	var stack, comps = []int{}, [][]int{}
	next := 0
	type frame struct{ v, e int }
	for root := 0; root < n; root++ {
		if index[root] >= 0 {
			continue
		}
		call := []frame{{root, 0}}
		index[root], low[root] = next, next
		next++
		stack = append(stack, root)
		onStack[root] = true
		for len(call) > 0 {
			fr := &call[len(call)-1]
			if fr.e < len(edges[fr.v]) {
				w := edges[fr.v][fr.e]
				fr.e++
				switch {
				case index[w] < 0:
					index[w], low[w] = next, next
					next++
					stack = append(stack, w)
					onStack[w] = true
					call = append(call, frame{w, 0})
				case onStack[w]:
					low[fr.v] = min(low[fr.v], index[w])
				}
				continue
			}
			v := fr.v
			call = call[:len(call)-1]
			if len(call) > 0 {
				p := call[len(call)-1].v
				low[p] = min(low[p], low[v])
			}
			if low[v] == index[v] {
				var comp []int
				for {
					w := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					onStack[w] = false
					comp = append(comp, w)
					if w == v {
						break
					}
				}
				comps = append(comps, comp)
			}
		}
	}
	return comps
}

// checkPins requires, with trust: pinned, a hostKey on every host that is
// substituted from and on every host that substitutes (its server's agent
// connects back to it).
func checkPins(el *errorList, infos []*hostInfo, edges [][]int) {
	consumers := make([][]string, len(infos))
	for i, es := range edges {
		for _, t := range es {
			consumers[t] = append(consumers[t], infos[i].rawName)
		}
	}
	for i, hi := range infos {
		if hi.hostKeyGiven || (len(consumers[i]) == 0 && len(edges[i]) == 0) {
			continue
		}
		why := fmt.Sprintf("%s substitutes from it", shortList(consumers[i], 3))
		if len(consumers[i]) == 0 {
			why = fmt.Sprintf("it substitutes from %s, whose agent connects to it", infos[edges[i][0]].rawName)
		}
		el.add(hi.h.Pos, "%s has no hostKey, but trust: pinned requires one because %s; add hostKey: \"ssh-ed25519 AAAA...\" with the key that \"%s\" prints (without the host name it starts with), or that \"nixpeer facts\" prints on that host",
			hi.label(), why, keyscan(hi))
	}
}
