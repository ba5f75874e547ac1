package desired

import (
	"os"
	"strings"
	"testing"
)

// TestManPageNamesEveryField: nixpeer-desired.yaml(5) describes every
// field the parser reads, every trust mode and every platform, so a
// field added here without a word in the page fails.
func TestManPageNamesEveryField(t *testing.T) {
	raw, err := os.ReadFile("../../docs/man/nixpeer-desired.yaml.5.md")
	if err != nil {
		t.Fatal(err)
	}
	page := string(raw)
	var words []string
	words = append(words, fileFields...)
	words = append(words, hostFields...)
	words = append(words, serveFields...)
	words = append(words, trustFields...)
	words = append(words, cacheFields...)
	words = append(words, s3Fields...)
	for _, tr := range []Trust{TrustApprove, TrustPinned, TrustTOFU, TrustCA} {
		words = append(words, string(tr))
	}
	for _, p := range []Platform{PlatformNixOS, PlatformNixOSModule, PlatformNix} {
		words = append(words, string(p))
	}
	for _, w := range words {
		if !strings.Contains(page, "\n**"+w+"**\n:") {
			t.Errorf("docs/man/nixpeer-desired.yaml.5.md has no entry **%s**", w)
		}
	}
}
