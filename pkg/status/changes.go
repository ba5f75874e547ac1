package status

import "fmt"

// Changes lists, in words, what differs from prev to next: each condition
// whose status or reason changed, appeared or went, and each peer whose
// state or trust changed, appeared or went. For the history of reconciles.
func Changes(prev, next Status) []string {
	var out []string
	if prev.Generation != next.Generation {
		out = append(out, fmt.Sprintf("generation %d -> %d", prev.Generation, next.Generation))
	}
	for _, c := range next.Conditions {
		old := Find(prev.Conditions, c.Type)
		switch {
		case old == nil:
			out = append(out, fmt.Sprintf("%s %s (%s)", c.Type, c.Status, c.Reason))
		case old.Status != c.Status || old.Reason != c.Reason:
			out = append(out, fmt.Sprintf("%s %s (%s) -> %s (%s)", c.Type, old.Status, old.Reason, c.Status, c.Reason))
		}
	}
	for _, c := range prev.Conditions {
		if Find(next.Conditions, c.Type) == nil {
			out = append(out, fmt.Sprintf("%s gone", c.Type))
		}
	}
	for _, p := range next.Peers {
		old := findPeer(prev.Peers, p.Name)
		switch {
		case old == nil:
			out = append(out, fmt.Sprintf("peer %s (%s): %s, trust %s", p.Name, p.Role, p.State, p.Trust))
		case old.State != p.State || old.Trust != p.Trust || old.HostKeyFingerprint != p.HostKeyFingerprint ||
			old.RefusedHostKeyFingerprint != p.RefusedHostKeyFingerprint:
			s := fmt.Sprintf("peer %s: %s -> %s", p.Name, old.State, p.State)
			if old.Trust != p.Trust || old.HostKeyFingerprint != p.HostKeyFingerprint {
				s += fmt.Sprintf(", trust %s -> %s %s", old.Trust, p.Trust, p.HostKeyFingerprint)
			}
			if p.RefusedHostKeyFingerprint != "" {
				s += ", refused " + p.RefusedHostKeyFingerprint
			}
			out = append(out, s)
		}
	}
	for _, p := range prev.Peers {
		if findPeer(next.Peers, p.Name) == nil {
			out = append(out, fmt.Sprintf("peer %s gone", p.Name))
		}
	}
	return out
}

func findPeer(peers []Peer, name string) *Peer {
	for i := range peers {
		if peers[i].Name == name {
			return &peers[i]
		}
	}
	return nil
}
