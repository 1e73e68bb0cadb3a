package crd

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
)

// Docs are the doc comments of pkg/api's types and fields, by "Type" and
// "Type.Field": the CRDs' descriptions, which `kubectl explain` shows.
type Docs map[string]string

// DocsOf reads the doc comments of the Go package in dir (pkg/api's source;
// its tests are left out).
func DocsOf(dir string) (Docs, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("crd: read the types' docs: %w", err)
	}
	fset := token.NewFileSet()
	docs := Docs{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.ParseComments)
		if err != nil {
			return nil, fmt.Errorf("crd: read the types' docs: %w", err)
		}
		addDocs(docs, f)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("crd: no struct types in %s", dir)
	}
	return docs, nil
}

// addDocs adds the doc comments of f's struct types and their fields to docs.
func addDocs(docs Docs, f *ast.File) {
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.TYPE {
			continue
		}
		for _, spec := range gd.Specs {
			ts := spec.(*ast.TypeSpec)
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				continue
			}
			typeDoc := ts.Doc
			if typeDoc == nil && len(gd.Specs) == 1 {
				typeDoc = gd.Doc
			}
			docs[ts.Name.Name] = clean(typeDoc)
			for _, fl := range st.Fields.List {
				c := fl.Doc
				if c == nil {
					c = fl.Comment
				}
				for _, n := range fl.Names {
					docs[ts.Name.Name+"."+n.Name] = clean(c)
				}
			}
		}
	}
}

// clean joins a comment's lines into one line.
func clean(c *ast.CommentGroup) string {
	if c == nil {
		return ""
	}
	return strings.Join(strings.Fields(c.Text()), " ")
}
